//! Node lifecycle on 3-node clusters, driven by real kubectl.
//!
//! With the `sim` runtime: a SIGKILLed node becomes NotReady with the unreachable taint, its
//! pods not Ready, and its ReplicaSet pods are replaced on the other nodes (the evicted ones
//! stay Terminating until it returns); restarted, it is Ready again and untainted, and its
//! kubelet finishes the evicted pods; `kubectl drain` cordons a node and evicts its pods,
//! which are replaced elsewhere.
//!
//! With the `process` runtime (real containers from the busybox image): a SIGKILLed node's
//! Deployment pods run on the other nodes (the test prints how long that took); restarted,
//! the node stops the containers of its evicted pods.

use std::time::Instant;

use flotilla_tests::kubectl::{Kubectl, busybox_cluster, kubectl_binary};
use flotilla_tests::{CONVERGE, TestCluster, eventually};

const WEB: &str = "apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web}
spec:
  replicas: 6
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: busybox
        volumeMounts: [{name: scratch, mountPath: /scratch}]
      volumes: [{name: scratch, emptyDir: {}}]
";

/// A pod of `app=web`: name, node, phase, and whether it is being deleted.
#[derive(Debug)]
struct Pod {
    node: String,
    phase: String,
    terminating: bool,
}

async fn web_pods(k: &Kubectl, via: usize) -> Vec<Pod> {
    let (_, out, _) = k
        .run(
            via,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            ],
            None,
        )
        .await;
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Pod {
                node: f.get(1).copied().unwrap_or("").to_owned(),
                phase: f.get(2).copied().unwrap_or("").to_owned(),
                terminating: f.get(3).is_some_and(|t| !t.is_empty()),
            }
        })
        .collect()
}

/// Running, not terminating pods, none on `not_on`.
async fn running_elsewhere(k: &Kubectl, via: usize, not_on: &str) -> anyhow::Result<usize> {
    let pods = web_pods(k, via).await;
    let live: Vec<&Pod> = pods.iter().filter(|p| !p.terminating).collect();
    anyhow::ensure!(
        live.len() == 6
            && live
                .iter()
                .all(|p| p.phase == "Running" && !p.node.is_empty() && p.node != not_on),
        "{pods:?}"
    );
    Ok(pods.iter().filter(|p| p.terminating).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_nodes_are_tainted_and_emptied_and_drain_evicts() {
    let binary = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let mut cluster = TestCluster::start("nodelife", 3, 3, &["--runtime", "sim"])
        .await
        .unwrap();
    let k = Kubectl {
        binary,
        kubeconfig: cluster.kubeconfig_path(),
    };
    eventually(CONVERGE, "three Ready nodes", || async {
        let (ok, out, err) = k.run(0, &["get", "nodes"], None).await;
        anyhow::ensure!(ok && out.matches(" Ready ").count() == 3, "{out}{err}");
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["apply", "-f", "-"], Some(WEB)).await;
    eventually(CONVERGE, "six web pods running", || async {
        running_elsewhere(&k, 0, "none").await.map(drop)
    })
    .await
    .unwrap();
    let on_victim = web_pods(&k, 0)
        .await
        .iter()
        .filter(|p| p.node == "node-3")
        .count();
    assert!(on_victim > 0, "no pod on node-3 to evict");

    // node-3 dies.
    let killed = Instant::now();
    cluster.kill(2).await.unwrap();
    eventually(CONVERGE, "node-3 NotReady and tainted", || async {
        let (_, out, _) = k.run(0, &["get", "nodes"], None).await;
        anyhow::ensure!(
            out.lines()
                .any(|l| l.starts_with("node-3 ") && l.contains(" NotReady ")),
            "{out}"
        );
        let node = k
            .ok(
                1,
                &[
                    "get",
                    "node",
                    "node-3",
                    "-o",
                    "jsonpath={.spec.taints[*].key}:{.spec.taints[*].effect} {.status.conditions[?(@.type==\"Ready\")].reason}",
                ],
                None,
            )
            .await;
        anyhow::ensure!(
            node == "node.kubernetes.io/unreachable:NoExecute NodeStatusUnknown",
            "{node}"
        );
        Ok(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}"))
    .unwrap();
    println!(
        "node-3 NotReady and tainted {:?} after SIGKILL",
        killed.elapsed()
    );
    let terminating = eventually(CONVERGE, "web replaced on node-1 and node-2", || async {
        running_elsewhere(&k, 0, "node-3").await
    })
    .await
    .unwrap();
    println!(
        "node-3's pods replaced {:?} after SIGKILL",
        killed.elapsed()
    );
    assert_eq!(terminating, on_victim, "the evicted pods stay Terminating");
    // Nobody vouches for them any more: not Ready, so Services stop sending them traffic.
    let ready = k
        .ok(
            1,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "--field-selector",
                "spec.nodeName=node-3",
                "-o",
                "jsonpath={.items[*].status.conditions[?(@.type==\"Ready\")].status}",
            ],
            None,
        )
        .await;
    assert_eq!(
        ready.split_whitespace().collect::<Vec<_>>(),
        vec!["False"; on_victim],
        "{ready}"
    );

    // node-3 returns: Ready, untainted, and its kubelet finishes the evicted pods.
    let restarted = Instant::now();
    cluster.start_node(2).unwrap();
    eventually(
        CONVERGE,
        "node-3 Ready, untainted, evicted pods gone",
        || async {
            let (_, out, _) = k.run(0, &["get", "nodes"], None).await;
            anyhow::ensure!(
                out.lines()
                    .any(|l| l.starts_with("node-3 ") && l.contains(" Ready ")),
                "{out}"
            );
            let taints = k
                .ok(
                    1,
                    &["get", "node", "node-3", "-o", "jsonpath={.spec.taints}"],
                    None,
                )
                .await;
            anyhow::ensure!(!taints.contains("unreachable"), "{taints}");
            anyhow::ensure!(running_elsewhere(&k, 0, "node-3").await? == 0);
            Ok(())
        },
    )
    .await
    .unwrap();
    println!("node-3 Ready again {:?} after restart", restarted.elapsed());

    // Drain node-2: cordoned, its pods evicted and replaced on the others.
    let (ok, out, err) = k
        .run(
            0,
            &[
                "drain",
                "node-2",
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=120s",
            ],
            None,
        )
        .await;
    assert!(ok, "drain failed:\n{out}\n{err}");
    assert!(
        out.contains("evicting pod") || err.contains("evicting pod"),
        "{out}\n{err}"
    );
    assert!(out.contains("node/node-2 drained"), "{out}\n{err}");
    let (_, nodes, _) = k.run(0, &["get", "nodes"], None).await;
    assert!(
        nodes
            .lines()
            .any(|l| l.starts_with("node-2 ") && l.contains("SchedulingDisabled")),
        "{nodes}"
    );
    eventually(CONVERGE, "web off node-2", || async {
        let terminating = running_elsewhere(&k, 1, "node-2").await?;
        anyhow::ensure!(terminating == 0, "{terminating} still terminating");
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["uncordon", "node-2"], None).await;

    // Evicting a pod that is not there is NotFound; an Eviction naming another pod than
    // its URL is refused.
    let eviction = |name: &str| {
        format!(r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{name}"}}}}"#)
    };
    let err = k
        .fails(
            0,
            &[
                "create",
                "--raw",
                "/api/v1/namespaces/default/pods/nope/eviction",
                "-f",
                "-",
            ],
            Some(&eviction("nope")),
        )
        .await;
    assert!(
        err.contains("NotFound") || err.contains("not found"),
        "{err}"
    );
    let (_, some_pod, _) = k
        .run(
            0,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={.items[0].metadata.name}",
            ],
            None,
        )
        .await;
    let err = k
        .fails(
            0,
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/default/pods/{some_pod}/eviction"),
                "-f",
                "-",
            ],
            Some(&eviction("someone-else")),
        )
        .await;
    assert!(err.contains("does not match"), "{err}");

    cluster.stop().await.unwrap();
}

const HELLO: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: hello}
spec:
  replicas: 6
  selector: {matchLabels: {app: hello}}
  template:
    metadata: {labels: {app: hello}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:1.36
        command: [sh, -c, 'echo started on $NODE; while true; do sleep 1; done']
        env:
        - name: NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
";

/// `name node phase deleting` of every `app=hello` pod.
async fn hello_pods(k: &Kubectl, via: usize) -> Vec<(String, String, String, bool)> {
    let (_, out, _) = k
        .run(
            via,
            &[
                "get",
                "pods",
                "-l",
                "app=hello",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            ],
            None,
        )
        .await;
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let at = |i: usize| f.get(i).copied().unwrap_or("").to_owned();
            (at(0), at(1), at(2), !at(3).is_empty())
        })
        .collect()
}

/// Container processes (runtime shims) started by the node whose data dir is `dir`.
fn shims_of(dir: &std::path::Path) -> usize {
    let needle = format!("{}/", dir.display());
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .filter(|c| c.contains("runtime-shim") && c.contains(&needle))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_nodes_containers_are_replaced_on_the_others() {
    let Some((mut cluster, k)) = busybox_cluster("nodelife-proc", 3, &[]).await else {
        return;
    };
    k.ok(0, &["apply", "-f", "-"], Some(HELLO)).await;
    let (ok, out, err) = k
        .run(
            1,
            &["rollout", "status", "deployment/hello", "--timeout=120s"],
            None,
        )
        .await;
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");
    // The node holding the most pods dies (the leader or not: two voters remain).
    let pods = hello_pods(&k, 0).await;
    let victim = (0..3)
        .max_by_key(|i| pods.iter().filter(|p| p.1 == cluster.name(*i)).count())
        .unwrap();
    let victim_name = cluster.name(victim).to_owned();
    let held: Vec<String> = pods
        .iter()
        .filter(|p| p.1 == victim_name)
        .map(|p| p.0.clone())
        .collect();
    assert!(!held.is_empty(), "no pod on {victim_name}: {pods:?}");
    let via = (victim + 1) % 3;

    let killed = Instant::now();
    cluster.kill(victim).await.unwrap();
    eventually(
        CONVERGE,
        "six hello pods Running on the other nodes",
        || async {
            let pods = hello_pods(&k, via).await;
            let live: Vec<_> = pods.iter().filter(|p| !p.3).collect();
            anyhow::ensure!(
                live.len() == 6
                    && live
                        .iter()
                        .all(|p| p.2 == "Running" && !p.1.is_empty() && p.1 != victim_name),
                "{pods:?}"
            );
            // Every pod it held is evicted (Terminating until it returns) or gone.
            anyhow::ensure!(
                held.iter()
                    .all(|h| pods.iter().find(|p| &p.0 == h).is_none_or(|p| p.3)),
                "{pods:?}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    println!(
        "{victim_name} SIGKILLed: its {} pods Running on the other nodes {:?} later",
        held.len(),
        killed.elapsed()
    );
    // The replacements are real containers: one that runs elsewhere says so in its log.
    let replacement = hello_pods(&k, via)
        .await
        .into_iter()
        .find(|p| !p.3 && !held.contains(&p.0) && !pods.iter().any(|q| q.0 == p.0))
        .expect("a replacement pod");
    let log = k.ok(via, &["logs", &replacement.0], None).await;
    assert_eq!(log.trim(), format!("started on {}", replacement.1), "{log}");
    // The killed daemon's containers outlived it (by design); they are still there.
    let dir = cluster.node_dir(victim);
    assert!(
        shims_of(&dir) > 0,
        "the containers of {victim_name} are gone"
    );

    // Back again, the node stops the containers of the pods evicted while it was dead.
    cluster.start_node(victim).unwrap();
    eventually(
        CONVERGE,
        "the evicted pods gone and their containers stopped",
        || async {
            let pods = hello_pods(&k, via).await;
            anyhow::ensure!(
                pods.len() == 6 && pods.iter().all(|p| !p.3 && p.1 != victim_name),
                "{pods:?}"
            );
            let left = shims_of(&dir);
            anyhow::ensure!(left == 0, "{left} containers of {victim_name} still run");
            Ok(())
        },
    )
    .await
    .unwrap();
    k.ok(0, &["delete", "deployment", "hello"], None).await;
}
