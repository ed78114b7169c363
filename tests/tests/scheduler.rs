//! The scheduler on a 3-node cluster (`sim` runtime: placement does not need processes),
//! driven by real kubectl: pods without a node are spread over the nodes and run (and a
//! Service's Endpoints and EndpointSlices follow them); requests
//! never overcommit a node even with every shard binding at once; nodeSelector, cordon and
//! taints are honoured; a pod that fits nowhere stays Pending with Kubernetes' reason and is
//! placed when the cluster changes; required pod anti-affinity spreads a Deployment one per
//! node and keeps a fourth replica Pending, required pod affinity follows its pod, and
//! preferred node affinity steers pods; topologySpreadConstraints balance pods over zones and
//! keep a pod Pending where no node has the topology key; after a node is SIGKILLed, its shards
//! move and new pods land on the live nodes.

use std::collections::BTreeMap;

use flotilla_tests::kubectl::{Kubectl, kubectl_binary};
use flotilla_tests::{CONVERGE, TestCluster, eventually};

fn pod(name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: sched}}}}
spec:
  {extra_spec}
  containers:
  - name: app
    image: busybox
"
    )
}

/// Pod name → node, for pods named with `prefix`.
async fn placements(k: &Kubectl, prefix: &str) -> BTreeMap<String, String> {
    let (_, out, _) = k
        .run(
            0,
            &[
                "get",
                "pods",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.spec.nodeName}{\"\\n\"}{end}",
            ],
            None,
        )
        .await;
    out.lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(n, _)| n.starts_with(prefix))
        .map(|(n, node)| (n.to_owned(), node.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_scheduled_spread_fenced_and_rescheduled_when_the_cluster_changes() {
    let binary = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let mut cluster = TestCluster::start("scheduler", 3, 3, &["--runtime", "sim"])
        .await
        .unwrap();
    let k = Kubectl {
        binary,
        kubeconfig: cluster.kubeconfig_path(),
    };
    eventually(CONVERGE, "three nodes", || async {
        let (ok, out, err) = k.run(0, &["get", "nodes", "-o", "name"], None).await;
        anyhow::ensure!(ok && out.lines().count() == 3, "{out}{err}");
        Ok(())
    })
    .await
    .unwrap();

    // Six pods, no node named: two per node, all Running.
    let six: String = (0..6)
        .map(|i| pod(&format!("spread-{i}"), "") + "---\n")
        .collect();
    k.ok(1, &["apply", "-f", "-"], Some(&six)).await;
    eventually(CONVERGE, "six pods placed and running", || async {
        let placed = placements(&k, "spread-").await;
        anyhow::ensure!(
            placed.values().filter(|n| !n.is_empty()).count() == 6,
            "{placed:?}"
        );
        let (_, out, _) = k.run(2, &["get", "pods", "-l", "app=sched"], None).await;
        anyhow::ensure!(out.matches("Running").count() == 6, "{out}");
        Ok(())
    })
    .await
    .unwrap();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for node in placements(&k, "spread-").await.values() {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    assert_eq!(
        per_node.values().copied().collect::<Vec<_>>(),
        [2, 2, 2],
        "{per_node:?}"
    );

    // A Service over them: Endpoints and an EndpointSlice list the six pods' IPs.
    k.ok(
        0,
        &["create", "service", "clusterip", "sched", "--tcp=80:8080"],
        None,
    )
    .await;
    k.ok(
        0,
        &["set", "selector", "service", "sched", "app=sched"],
        None,
    )
    .await;
    eventually(CONVERGE, "endpoints of the six pods", || async {
        let (_, out, _) = k
            .run(1, &["get", "endpoints", "sched", "-o", "jsonpath={.subsets[*].addresses[*].targetRef.name} {.subsets[*].ports[*].port}"], None)
            .await;
        anyhow::ensure!(out.matches("spread-").count() == 6 && out.ends_with(" 8080"), "{out}");
        let (_, slices, _) = k
            .run(2, &["get", "endpointslices", "-l", "kubernetes.io/service-name=sched", "-o", "jsonpath={.items[*].endpoints[*].targetRef.name}"], None)
            .await;
        anyhow::ensure!(slices.matches("spread-").count() == 6, "{slices}");
        Ok(())
    })
    .await
    .unwrap();
    k.ok(
        0,
        &["delete", "pod", "spread-0", "--grace-period=0", "--force"],
        None,
    )
    .await;
    eventually(CONVERGE, "endpoints without the deleted pod", || async {
        let (_, out, _) = k
            .run(
                1,
                &[
                    "get",
                    "endpoints",
                    "sched",
                    "-o",
                    "jsonpath={.subsets[*].addresses[*].targetRef.name}",
                ],
                None,
            )
            .await;
        anyhow::ensure!(
            out.matches("spread-").count() == 5 && !out.contains("spread-0"),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Requests: every node has its machine's CPUs allocatable; pods asking for a third of a
    // node's CPU fit three to a node, however many shards bind at once.
    let cpus: u64 = k
        .ok(
            0,
            &[
                "get",
                "node",
                "node-1",
                "-o",
                "jsonpath={.status.allocatable.cpu}",
            ],
            None,
        )
        .await
        .parse()
        .unwrap();
    let each = cpus * 1000 / 3;
    let hungry: String = (0..12)
        .map(|i| {
            pod(&format!("hungry-{i:02}"), "").replace(
                "    image: busybox\n",
                &format!("    image: busybox\n    resources: {{requests: {{cpu: {each}m}}}}\n"),
            ) + "---\n"
        })
        .collect();
    k.ok(0, &["apply", "-f", "-"], Some(&hungry)).await;
    eventually(
        CONVERGE,
        "nine hungry pods placed, three left over",
        || async {
            let placed = placements(&k, "hungry-").await;
            let bound = placed.values().filter(|n| !n.is_empty()).count();
            anyhow::ensure!(bound == 9 && placed.len() == 12, "{placed:?}");
            Ok(())
        },
    )
    .await
    .unwrap();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for node in placements(&k, "hungry-")
        .await
        .values()
        .filter(|n| !n.is_empty())
    {
        *per_node.entry(node.clone()).or_default() += 1;
    }
    assert!(
        per_node.values().all(|n| *n == 3),
        "overcommitted: {per_node:?}"
    );
    let left = placements(&k, "hungry-")
        .await
        .into_iter()
        .find(|(_, n)| n.is_empty())
        .unwrap()
        .0;
    eventually(CONVERGE, "the reason a hungry pod waits", || async {
        let (_, out, _) = k.run(1, &["describe", "pod", &left], None).await;
        anyhow::ensure!(
            out.contains("FailedScheduling")
                && out.contains("0/3 nodes are available: 3 Insufficient cpu."),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();
    // Deleting the placed ones lets the waiting ones in.
    let placed: Vec<String> = placements(&k, "hungry-")
        .await
        .into_iter()
        .filter(|(_, n)| !n.is_empty())
        .map(|(p, _)| p)
        .collect();
    let mut args = vec!["delete", "pod", "--grace-period=0", "--force"];
    args.extend(placed.iter().map(String::as_str));
    k.ok(2, &args, None).await;
    eventually(CONVERGE, "the three waiting pods placed", || async {
        let placed = placements(&k, "hungry-").await;
        anyhow::ensure!(
            placed.len() == 3 && placed.values().all(|n| !n.is_empty()),
            "{placed:?}"
        );
        Ok(())
    })
    .await
    .unwrap();

    // nodeSelector, cordon and taints.
    k.ok(0, &["cordon", "node-3"], None).await;
    k.ok(
        0,
        &["taint", "nodes", "node-1", "dedicated=db:NoSchedule"],
        None,
    )
    .await;
    k.ok(
        1,
        &["apply", "-f", "-"],
        Some(&(pod("picky", "nodeSelector: {kubernetes.io/hostname: node-2}")
            + "---\n"
            + &pod("plain", "")
            + "---\n"
            + &pod(
                "tolerant",
                "nodeSelector: {kubernetes.io/hostname: node-1}\n  tolerations: [{key: dedicated, operator: Equal, value: db, effect: NoSchedule}]",
            )
            + "---\n"
            + &pod("blue", "nodeSelector: {pool: blue}"))),
    )
    .await;
    eventually(
        CONVERGE,
        "selected, cordoned and tainted placements",
        || async {
            let placed = placements(&k, "").await;
            anyhow::ensure!(
                placed.get("picky").map(String::as_str) == Some("node-2")
                    && placed.get("plain").map(String::as_str) == Some("node-2")
                    && placed.get("tolerant").map(String::as_str) == Some("node-1")
                    && placed.get("blue").map(String::as_str) == Some(""),
                "{placed:?}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();
    // The pod no node fitted is placed once a node gets the label.
    k.ok(0, &["uncordon", "node-3"], None).await;
    k.ok(0, &["label", "node", "node-3", "pool=blue"], None)
        .await;
    eventually(CONVERGE, "blue placed on node-3", || async {
        let placed = placements(&k, "blue").await;
        anyhow::ensure!(
            placed.get("blue").map(String::as_str) == Some("node-3"),
            "{placed:?}"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Inter-pod and preferred node affinity, on all three nodes again.
    k.ok(
        0,
        &["taint", "nodes", "node-1", "dedicated=db:NoSchedule-"],
        None,
    )
    .await;
    affinity(&k).await;
    topology_spread(&k).await;
    large_service(&k).await;

    // node-3 dies: once gossip says so, the scheduler leaves it out (its shards moved to the
    // live nodes), and new pods go to the live nodes only.
    cluster.kill(2).await.unwrap();
    let started = std::time::Instant::now();
    eventually(CONVERGE, "gossip declares node-3 dead", || async {
        for i in 0..2 {
            let s = cluster.status(i, false).await?;
            anyhow::ensure!(
                s.members.iter().any(|m| m.name == "node-3" && !m.alive),
                "node-{} still sees node-3",
                i + 1
            );
        }
        Ok(())
    })
    .await
    .unwrap();
    eprintln!(
        "gossip declared node-3 dead {} ms after its SIGKILL",
        started.elapsed().as_millis()
    );
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&pod(
            "orphan",
            "nodeSelector: {kubernetes.io/hostname: node-3}",
        )),
    )
    .await;
    eventually(CONVERGE, "node-3 seen as not ready", || async {
        let (_, out, _) = k.run(1, &["describe", "pod", "orphan"], None).await;
        anyhow::ensure!(out.contains("1 node(s) were not ready"), "{out}");
        Ok(())
    })
    .await
    .unwrap();
    let late: String = (0..4)
        .map(|i| pod(&format!("late-{i}"), "") + "---\n")
        .collect();
    k.ok(0, &["apply", "-f", "-"], Some(&late)).await;
    eventually(CONVERGE, "late pods on live nodes", || async {
        let placed = placements(&k, "late-").await;
        anyhow::ensure!(
            placed.len() == 4 && placed.values().all(|n| n == "node-1" || n == "node-2"),
            "{placed:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
}

/// A Deployment `name` of `replicas` with `affinity` (YAML flow mapping) in its pod template.
fn deployment(name: &str, replicas: u32, affinity: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      affinity: {affinity}
      containers:
      - name: app
        image: busybox
"
    )
}

fn nodes_of(placed: &BTreeMap<String, String>) -> Vec<&str> {
    let mut nodes: Vec<&str> = placed.values().map(String::as_str).collect();
    nodes.sort();
    nodes
}

async fn affinity(k: &Kubectl) {
    // Three replicas created at once, each refusing a node that has one: one per node, though
    // different shards may place them at the same moment.
    let anti = "{podAntiAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{labelSelector: {matchLabels: {app: anti}}, topologyKey: kubernetes.io/hostname}]}}";
    k.ok(0, &["apply", "-f", "-"], Some(&deployment("anti", 3, anti)))
        .await;
    eventually(CONVERGE, "anti-affine replicas one per node", || async {
        let placed = placements(k, "anti-").await;
        anyhow::ensure!(
            nodes_of(&placed) == ["node-1", "node-2", "node-3"],
            "{placed:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["scale", "deployment", "anti", "--replicas=4"], None)
        .await;
    eventually(CONVERGE, "the fourth replica pending", || async {
        let placed = placements(k, "anti-").await;
        let pending = placed.iter().find(|(_, n)| n.is_empty());
        anyhow::ensure!(placed.len() == 4 && pending.is_some(), "{placed:?}");
        let (_, out, _) = k
            .run(1, &["describe", "pod", pending.unwrap().0], None)
            .await;
        anyhow::ensure!(
            out.contains("FailedScheduling")
                && out.contains(
                    "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules."
                ),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["delete", "deployment", "anti"], None).await;

    // Required affinity to a labelled pod: the follower lands on that pod's node, whichever
    // node the lighter load would have picked.
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(
            &(pod("anchor", "nodeSelector: {kubernetes.io/hostname: node-2}")
                .replace("app: sched", "role: anchor")
                + "---\n"
                + &pod(
                    "follower",
                    "affinity: {podAffinity: {requiredDuringSchedulingIgnoredDuringExecution: [{labelSelector: {matchLabels: {role: anchor}}, topologyKey: kubernetes.io/hostname}]}}",
                )),
        ),
    )
    .await;
    // Preferred node affinity outweighs spreading a Deployment's pods.
    let preferred = "{nodeAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 10, preference: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [node-3]}]}}]}}";
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&deployment("preferring", 3, preferred)),
    )
    .await;
    eventually(CONVERGE, "affine placements", || async {
        let placed = placements(k, "").await;
        let preferring = placements(k, "preferring-").await;
        anyhow::ensure!(
            placed.get("anchor").map(String::as_str) == Some("node-2")
                && placed.get("follower").map(String::as_str) == Some("node-2")
                && nodes_of(&preferring) == ["node-3"; 3],
            "{placed:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["delete", "deployment", "preferring"], None).await;
}

async fn topology_spread(k: &Kubectl) {
    // Zone a: node-1 and node-2; zone b: node-3.
    for (node, zone) in [("node-1", "a"), ("node-2", "a"), ("node-3", "b")] {
        k.ok(
            0,
            &[
                "label",
                "nodes",
                node,
                &format!("topology.kubernetes.io/zone={zone}"),
            ],
            None,
        )
        .await;
    }
    // One at a time (so no two shards place them at the same moment, which a zone-wide
    // constraint does not fence): maxSkew 1 over two zones ends 2 and 2, so node-3, alone in
    // zone b, takes two though the least-allocated score alone would spread them 1/1/2 or so.
    let spread = "topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: zoned}}}]";
    for i in 0..4 {
        let name = format!("zoned-{i}");
        k.ok(
            0,
            &["apply", "-f", "-"],
            Some(&pod(&name, spread).replace("app: sched", "app: zoned")),
        )
        .await;
        eventually(CONVERGE, "a zoned pod bound", || async {
            let placed = placements(k, &name).await;
            anyhow::ensure!(placed.values().any(|n| !n.is_empty()), "{placed:?}");
            Ok(())
        })
        .await
        .unwrap();
    }
    // The scheduler's event, as `kubectl describe` shows it.
    let (_, out, _) = k.run(1, &["describe", "pod", "zoned-0"], None).await;
    assert!(
        out.contains("Scheduled") && out.contains("Successfully assigned default/zoned-0 to node-"),
        "{out}"
    );
    let placed = placements(k, "zoned-").await;
    assert_eq!(
        placed.values().filter(|n| *n == "node-3").count(),
        2,
        "{placed:?}"
    );
    // No node has the key: Pending, in kube-scheduler's words.
    let rack = "topologySpreadConstraints: [{maxSkew: 1, topologyKey: example.com/rack, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: zoned}}}]";
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&pod("unracked", rack).replace("app: sched", "app: zoned")),
    )
    .await;
    eventually(CONVERGE, "the unracked pod pending", || async {
        let (_, out, _) = k.run(1, &["describe", "pod", "unracked"], None).await;
        anyhow::ensure!(
            out.contains("0/3 nodes are available: 3 node(s) didn't match pod topology spread constraints (missing required label)."),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();
    k.ok(
        0,
        &[
            "delete", "pod", "unracked", "zoned-0", "zoned-1", "zoned-2", "zoned-3",
        ],
        None,
    )
    .await;
}

/// A Service over 120 pods: its EndpointSlices hold at most 100 endpoints each (as
/// kube-controller-manager writes them), its Endpoints all 120 addresses.
async fn large_service(k: &Kubectl) {
    let manifest = deployment("wide", 120, "{}")
        + "---
apiVersion: v1
kind: Service
metadata: {name: wide}
spec:
  selector: {app: wide}
  ports: [{port: 80}]
";
    k.ok(0, &["apply", "-f", "-"], Some(&manifest)).await;
    eventually(
        CONVERGE,
        "120 endpoints in slices of at most 100",
        || async {
            let (_, out, _) = k
                .run(
                    1,
                    &[
                        "get",
                        "endpointslices",
                        "-l",
                        "kubernetes.io/service-name=wide",
                        "-o",
                        "json",
                    ],
                    None,
                )
                .await;
            let list: serde_json::Value = serde_json::from_str(&out)?;
            let sizes: Vec<usize> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["endpoints"].as_array().map_or(0, Vec::len))
                .collect();
            anyhow::ensure!(
                sizes.iter().sum::<usize>() == 120 && sizes.iter().all(|n| *n <= 100),
                "{sizes:?}"
            );
            let (_, out, _) = k
                .run(1, &["get", "endpoints", "wide", "-o", "json"], None)
                .await;
            let ep: serde_json::Value = serde_json::from_str(&out)?;
            let addresses: usize = ep["subsets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| s["addresses"].as_array().map_or(0, Vec::len))
                .sum();
            anyhow::ensure!(addresses == 120, "{addresses} ready addresses");
            Ok(())
        },
    )
    .await
    .unwrap();
    k.ok(0, &["delete", "deployment,service", "wide"], None)
        .await;
}
