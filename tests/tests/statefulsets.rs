//! StatefulSets end to end with real kubectl and the `process` runtime on 3 nodes:
//! - pods `web-0..2` start in order (a watch shows each ordinal created only after the one
//!   below it was Running and Ready), with their hostnames, subdomain FQDN in /etc/hosts and
//!   claims `data-web-<i>` bound to node-local volumes on the pods' nodes;
//! - a file written into a pod's volume survives the pod's deletion: the new pod of that
//!   ordinal lands on the same node with the same claim and reads it;
//! - a RollingUpdate with a partition updates only the ordinals at or above it;
//! - scaling down removes the highest ordinal first and keeps the claims;
//! - a claim deleted with reclaimPolicy Delete takes its PV and directory with it;
//! - a node SIGKILLed while holding a pod: once gossip declares it dead the pod object stays
//!   (same uid, same node) and is not recreated — not even after it is deleted and sits
//!   Terminating — and it comes back on that node when the node restarts.
//!
//! "Not recreated" is checked without timing: the StatefulSet's spec is changed and the test
//! waits for `status.observedGeneration` to catch up, which proves the controller reconciled
//! the set after the fault, reading the pods afresh; only then is the pod checked.
//!
//! The busybox image comes from `scripts/build-busybox-image.sh`; without it the test says so
//! and stops.

use flotilla_tests::kubectl::{Kubectl, busybox_cluster};
use flotilla_tests::{CONVERGE, eventually};

const STATEFULSET: &str = "apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web}
spec:
  serviceName: web
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:1.36
        command: [sh, -c, 'while true; do sleep 1; done']
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 1Gi}}
";

const SCRATCH: &str = "apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: scratch}
spec:
  accessModes: [ReadWriteOnce]
  resources: {requests: {storage: 1Gi}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: w
    image: busybox:1.36
    command: [sh, -c, 'echo scratch > /data/x']
    volumeMounts: [{name: d, mountPath: /data}]
  volumes: [{name: d, persistentVolumeClaim: {claimName: scratch}}]
";

async fn jsonpath(k: &Kubectl, node: usize, what: &[&str], path: &str) -> String {
    let mut args: Vec<&str> = vec!["get"];
    args.extend_from_slice(what);
    let expr = format!("jsonpath={path}");
    args.extend(["-o", &expr]);
    k.run(node, &args, None).await.1
}

/// Starts `kubectl get pods -w` printing `name phase ready deleting` per event.
fn watch_pods(k: &Kubectl) -> tokio::process::Child {
    k.spawn(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-w",
        "-o",
        "jsonpath={.metadata.name} {.status.phase} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}",
    ])
}

async fn stop_watch(mut w: tokio::process::Child) -> Vec<String> {
    let _ = w.start_kill();
    let out = w.wait_with_output().await.unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The first line (index) of the watch satisfying `f`.
fn first(lines: &[String], f: impl Fn(&[&str]) -> bool) -> Option<usize> {
    lines.iter().position(|l| {
        let fields: Vec<&str> = l.split_whitespace().collect();
        f(&fields)
    })
}

/// A pod's uid, node, phase, Ready status and deletion timestamp.
async fn pod_state(k: &Kubectl, node: usize, pod: &str) -> String {
    jsonpath(
        k,
        node,
        &["pod", pod],
        "{.metadata.uid} {.spec.nodeName} {.status.phase} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}",
    )
    .await
}

/// Changes the set's spec and waits until the controller has observed it: a reconcile that
/// read the pods after everything done before this call.
async fn controller_barrier(k: &Kubectl, node: usize, limit: u32) {
    k.ok(
        node,
        &[
            "patch",
            "sts",
            "web",
            "--type=merge",
            "-p",
            &format!("{{\"spec\":{{\"revisionHistoryLimit\":{limit}}}}}"),
        ],
        None,
    )
    .await;
    eventually(CONVERGE, "the controller observed the change", || async {
        let got = jsonpath(
            k,
            node,
            &["sts", "web"],
            "{.metadata.generation} {.status.observedGeneration}",
        )
        .await;
        let parts: Vec<&str> = got.split_whitespace().collect();
        anyhow::ensure!(parts.len() == 2 && parts[0] == parts[1], "{got}");
        Ok(())
    })
    .await
    .unwrap();
}

async fn rollout(k: &Kubectl, node: usize) -> String {
    let (ok, out, err) = k
        .run(
            node,
            &["rollout", "status", "sts/web", "--timeout=180s"],
            None,
        )
        .await;
    assert!(ok, "{out}{err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulsets_order_keep_storage_update_by_partition_and_never_duplicate_an_ordinal() {
    let Some((mut cluster, k)) = busybox_cluster("statefulsets", 3, &[]).await else {
        return;
    };
    let sc = jsonpath(
        &k,
        0,
        &["storageclass", "local"],
        "{.provisioner} {.volumeBindingMode}",
    )
    .await;
    assert_eq!(sc, "flotilla.io/local WaitForFirstConsumer");

    // Ordered start, seen through a watch.
    let watch = watch_pods(&k);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    k.ok(0, &["apply", "-f", "-"], Some(STATEFULSET)).await;
    let out = rollout(&k, 1).await;
    assert!(out.contains("complete"), "{out}");
    let seen = stop_watch(watch).await;
    for i in 1..3 {
        let created = first(&seen, |f| f.first() == Some(&format!("web-{i}").as_str()))
            .unwrap_or_else(|| panic!("web-{i} never seen: {seen:#?}"));
        let below_ready = first(&seen, |f| {
            f.first() == Some(&format!("web-{}", i - 1).as_str())
                && f.get(1) == Some(&"Running")
                && f.get(2) == Some(&"True")
        })
        .unwrap_or_else(|| panic!("web-{} never ready: {seen:#?}", i - 1));
        assert!(
            below_ready < created,
            "web-{i} was created before web-{} was ready: {seen:#?}",
            i - 1
        );
    }
    let names = jsonpath(
        &k,
        2,
        &["pods", "-l", "app=web"],
        "{.items[*].metadata.name}",
    )
    .await;
    assert_eq!(names, "web-0 web-1 web-2");
    let claims = jsonpath(
        &k,
        0,
        &["pvc"],
        "{range .items[*]}{.metadata.name}={.status.phase} {end}",
    )
    .await;
    assert_eq!(
        claims.trim(),
        "data-web-0=Bound data-web-1=Bound data-web-2=Bound"
    );
    for i in 0..3 {
        let pod = format!("web-{i}");
        let node = jsonpath(&k, 0, &["pod", &pod], "{.spec.nodeName}").await;
        let pv = jsonpath(
            &k,
            0,
            &["pvc", &format!("data-{pod}")],
            "{.spec.volumeName}",
        )
        .await;
        let pinned = jsonpath(
            &k,
            1,
            &["pv", &pv],
            "{.spec.nodeAffinity.required.nodeSelectorTerms[0].matchExpressions[0].values[0]} {.status.phase} {.spec.local.path}",
        )
        .await;
        assert!(
            pinned.starts_with(&format!("{node} Bound /")),
            "{pod} on {node}: pv {pv}: {pinned}"
        );
    }
    let hostname = k.ok(0, &["exec", "web-1", "--", "hostname"], None).await;
    assert_eq!(hostname.trim(), "web-1");
    let hosts = k
        .ok(0, &["exec", "web-1", "--", "cat", "/etc/hosts"], None)
        .await;
    assert!(
        hosts.contains("web-1.web.default.svc.cluster.local") && hosts.contains("\tweb-1"),
        "{hosts}"
    );

    // Storage outlives the pod: same ordinal, same claim, same node, same file.
    k.ok(
        1,
        &["exec", "web-1", "--", "sh", "-c", "echo kept > /data/file"],
        None,
    )
    .await;
    let before = pod_state(&k, 0, "web-1").await;
    k.ok(0, &["delete", "pod", "web-1"], None).await;
    let after = eventually(CONVERGE, "web-1 back, running and ready", || async {
        let now = pod_state(&k, 2, "web-1").await;
        let f: Vec<&str> = now.split_whitespace().collect();
        anyhow::ensure!(
            f.len() == 4
                && f[0] != before.split(' ').next().unwrap_or("")
                && f[2..] == ["Running", "True"],
            "{now}"
        );
        Ok(now)
    })
    .await
    .unwrap();
    assert_eq!(
        after.split(' ').nth(1),
        before.split(' ').nth(1),
        "same node: {before} / {after}"
    );
    let file = k
        .ok(2, &["exec", "web-1", "--", "cat", "/data/file"], None)
        .await;
    assert_eq!(file.trim(), "kept");

    // A partitioned rolling update changes only ordinals at or above the partition.
    k.ok(
        0,
        &[
            "patch",
            "sts",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"updateStrategy":{"type":"RollingUpdate","rollingUpdate":{"partition":2}}}}"#,
        ],
        None,
    )
    .await;
    k.ok(0, &["set", "env", "sts/web", "VERSION=2"], None).await;
    let out = rollout(&k, 1).await;
    assert!(out.contains("partitioned roll out complete"), "{out}");
    let revisions = jsonpath(
        &k,
        0,
        &["sts", "web"],
        "{.status.currentRevision} {.status.updateRevision} {.status.updatedReplicas}",
    )
    .await;
    let r: Vec<&str> = revisions.split_whitespace().collect();
    assert!(r.len() == 3 && r[0] != r[1] && r[2] == "1", "{revisions}");
    let labels = jsonpath(
        &k,
        0,
        &["pods", "-l", "app=web"],
        "{range .items[*]}{.metadata.name}={.metadata.labels.controller-revision-hash} {end}",
    )
    .await;
    assert_eq!(
        labels.trim(),
        format!("web-0={} web-1={} web-2={}", r[0], r[0], r[1])
    );
    // The partition lowered to 0: the rest follow, and the update becomes current.
    k.ok(
        0,
        &[
            "patch",
            "sts",
            "web",
            "--type=merge",
            "-p",
            r#"{"spec":{"updateStrategy":{"rollingUpdate":{"partition":0}}}}"#,
        ],
        None,
    )
    .await;
    let out = rollout(&k, 2).await;
    assert!(out.contains("complete"), "{out}");
    eventually(CONVERGE, "the update revision is current", || async {
        let got = jsonpath(
            &k,
            0,
            &["sts", "web"],
            "{.status.currentRevision} {.status.currentReplicas} {.status.updatedReplicas}",
        )
        .await;
        anyhow::ensure!(got == format!("{} 3 3", r[1]), "{got}");
        Ok(())
    })
    .await
    .unwrap();
    let env = k
        .ok(
            0,
            &["exec", "web-0", "--", "sh", "-c", "echo $VERSION"],
            None,
        )
        .await;
    assert_eq!(env.trim(), "2");

    // Scale down: the highest ordinal goes first; the claims stay.
    let watch = watch_pods(&k);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    k.ok(1, &["scale", "sts/web", "--replicas=1"], None).await;
    eventually(CONVERGE, "only web-0 left", || async {
        let names = jsonpath(
            &k,
            2,
            &["pods", "-l", "app=web"],
            "{.items[*].metadata.name}",
        )
        .await;
        anyhow::ensure!(names == "web-0", "{names}");
        Ok(())
    })
    .await
    .unwrap();
    let seen = stop_watch(watch).await;
    let deleting = |name: &'static str| {
        move |f: &[&str]| f.first() == Some(&name) && f.last().is_some_and(|t| t.ends_with('Z'))
    };
    let two = first(&seen, deleting("web-2")).expect("web-2 deleted");
    let one = first(&seen, deleting("web-1")).expect("web-1 deleted");
    assert!(two < one, "web-2 goes before web-1: {seen:#?}");
    let claims = jsonpath(&k, 0, &["pvc"], "{.items[*].metadata.name}").await;
    assert_eq!(claims, "data-web-0 data-web-1 data-web-2");
    k.ok(1, &["scale", "sts/web", "--replicas=3"], None).await;
    rollout(&k, 0).await;
    let file = k
        .ok(2, &["exec", "web-1", "--", "cat", "/data/file"], None)
        .await;
    assert_eq!(file.trim(), "kept", "web-1 came back to its claim");

    // A claim deleted with reclaimPolicy Delete takes its volume and directory along.
    k.ok(0, &["apply", "-f", "-"], Some(SCRATCH)).await;
    eventually(CONVERGE, "the writer finished", || async {
        let phase = jsonpath(&k, 0, &["pod", "writer"], "{.status.phase}").await;
        anyhow::ensure!(phase == "Succeeded", "{phase}");
        Ok(())
    })
    .await
    .unwrap();
    let pv = jsonpath(&k, 0, &["pvc", "scratch"], "{.spec.volumeName}").await;
    let path = jsonpath(&k, 0, &["pv", &pv], "{.spec.local.path}").await;
    let path = std::path::PathBuf::from(path);
    assert_eq!(
        std::fs::read_to_string(path.join("x")).unwrap_or_default(),
        "scratch\n"
    );
    k.ok(0, &["delete", "pod", "writer"], None).await;
    k.ok(0, &["delete", "pvc", "scratch"], None).await;
    eventually(CONVERGE, "the volume reclaimed", || async {
        let (ok, out, err) = k.run(1, &["get", "pv", &pv], None).await;
        anyhow::ensure!(!ok && err.contains("NotFound"), "{out}{err}");
        anyhow::ensure!(!path.exists(), "{} still there", path.display());
        Ok(())
    })
    .await
    .unwrap();

    // A node dies holding web-2: the pod is never duplicated, and comes back with the node.
    let node = jsonpath(&k, 0, &["pod", "web-2"], "{.spec.nodeName}").await;
    let dead = cluster.index_of(&node).unwrap();
    let alive = (dead + 1) % 3;
    let before = pod_state(&k, alive, "web-2").await;
    cluster.kill(dead).await.unwrap();
    eventually(CONVERGE, "gossip declares the node dead", || async {
        let s = cluster.status(alive, false).await?;
        let m = s.members.iter().find(|m| m.name == node);
        anyhow::ensure!(m.is_some_and(|m| !m.alive), "{m:?}");
        Ok(())
    })
    .await
    .unwrap();
    controller_barrier(&k, alive, 9).await;
    let now = pod_state(&k, alive, "web-2").await;
    assert_eq!(
        now.split(' ').take(2).collect::<Vec<_>>(),
        before.split(' ').take(2).collect::<Vec<_>>(),
        "web-2 is the same pod on the dead node"
    );
    // Deleted while its node is down, it stays Terminating: no second web-2 anywhere.
    k.ok(alive, &["delete", "pod", "web-2", "--wait=false"], None)
        .await;
    controller_barrier(&k, alive, 8).await;
    let now = pod_state(&k, alive, "web-2").await;
    let f: Vec<&str> = now.split_whitespace().collect();
    assert!(
        f.first() == before.split(' ').next().as_ref()
            && f.last().is_some_and(|t| t.ends_with('Z')),
        "web-2 still the old pod, terminating: {now} (was {before})"
    );
    let names = jsonpath(
        &k,
        alive,
        &["pods", "-l", "app=web"],
        "{.items[*].metadata.name}",
    )
    .await;
    assert_eq!(names, "web-0 web-1 web-2");
    // The node comes back, finishes the deletion, and web-2 is recreated on it.
    cluster.start_node(dead).unwrap();
    eventually(CONVERGE, "a new web-2 running on its node", || async {
        let now = pod_state(&k, alive, "web-2").await;
        let f: Vec<&str> = now.split_whitespace().collect();
        anyhow::ensure!(
            f.len() == 4
                && Some(&f[0]) != before.split(' ').next().as_ref()
                && f[1] == node
                && f[2..] == ["Running", "True"],
            "{now}"
        );
        Ok(())
    })
    .await
    .unwrap();
    cluster.stop().await.unwrap();
}

fn retained_set(name: &str, policy: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: {name}}}
spec:
  serviceName: {name}
  replicas: 3
  podManagementPolicy: Parallel
  {policy}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:1.36
        command: [sh, -c, 'while true; do sleep 1; done']
        volumeMounts: [{{name: data, mountPath: /data}}]
  volumeClaimTemplates:
  - metadata: {{name: data}}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {{requests: {{storage: 1Gi}}}}
"
    )
}

/// Names of the claims in the default namespace, sorted.
async fn claims(k: &Kubectl) -> Vec<String> {
    let mut names: Vec<String> = jsonpath(k, 0, &["pvc"], "{.items[*].metadata.name}")
        .await
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    names.sort();
    names
}

async fn running(k: &Kubectl, app: &str) -> usize {
    jsonpath(
        k,
        0,
        &["pods", "-l", &format!("app={app}")],
        "{range .items[*]}{.status.phase}{\"\\n\"}{end}",
    )
    .await
    .lines()
    .filter(|l| *l == "Running")
    .count()
}

/// persistentVolumeClaimRetentionPolicy: with whenScaled Delete, scaling 3→1 deletes the
/// claims of ordinals 1 and 2 and keeps 0's; with whenDeleted Delete, deleting the set deletes
/// the rest; the default (Retain) keeps every claim through both.
#[tokio::test(flavor = "multi_thread")]
async fn claim_retention_policy_deletes_claims_on_scale_down_and_set_deletion() {
    let Some((cluster, k)) = busybox_cluster("sts-retention", 1, &[]).await else {
        return;
    };
    let db = retained_set(
        "db",
        "persistentVolumeClaimRetentionPolicy: {whenDeleted: Delete, whenScaled: Delete}",
    );
    let keep = retained_set("keep", "");
    k.ok(0, &["apply", "-f", "-"], Some(&db)).await;
    k.ok(0, &["apply", "-f", "-"], Some(&keep)).await;
    eventually(CONVERGE, "6 pods running", || async {
        let (a, b) = (running(&k, "db").await, running(&k, "keep").await);
        anyhow::ensure!(a == 3 && b == 3, "db {a} keep {b}");
        Ok(())
    })
    .await
    .unwrap();
    let all = [
        "data-db-0",
        "data-db-1",
        "data-db-2",
        "data-keep-0",
        "data-keep-1",
        "data-keep-2",
    ];
    assert_eq!(claims(&k).await, all);
    let owner = jsonpath(
        &k,
        0,
        &["pvc", "data-db-0"],
        "{.metadata.ownerReferences[*].kind}/{.metadata.ownerReferences[*].name}",
    )
    .await;
    assert_eq!(owner, "StatefulSet/db");
    let owner = jsonpath(
        &k,
        0,
        &["pvc", "data-keep-0"],
        "{.metadata.ownerReferences}",
    )
    .await;
    assert_eq!(owner, "", "Retain leaves claims unowned");

    // Scale both to 1: db's claims of 1 and 2 go with their pods, keep's stay.
    k.ok(0, &["scale", "sts", "keep", "--replicas=1"], None)
        .await;
    eventually(CONVERGE, "keep scaled to 1", || async {
        let pods = jsonpath(
            &k,
            0,
            &["pods", "-l", "app=keep"],
            "{.items[*].metadata.name}",
        )
        .await;
        anyhow::ensure!(pods == "keep-0", "{pods}");
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["scale", "sts", "db", "--replicas=1"], None).await;
    eventually(
        CONVERGE,
        "db's claims of ordinals 1 and 2 deleted",
        || async {
            let c = claims(&k).await;
            anyhow::ensure!(
                c == ["data-db-0", "data-keep-0", "data-keep-1", "data-keep-2"],
                "{c:?}"
            );
            Ok(())
        },
    )
    .await
    .unwrap();

    // Delete both sets (keep first): db's last claim goes, keep's three stay.
    k.ok(0, &["delete", "sts", "keep"], None).await;
    eventually(CONVERGE, "keep's pods gone", || async {
        let pods = jsonpath(
            &k,
            0,
            &["pods", "-l", "app=keep"],
            "{.items[*].metadata.name}",
        )
        .await;
        anyhow::ensure!(pods.is_empty(), "{pods}");
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["delete", "sts", "db"], None).await;
    eventually(CONVERGE, "db's last claim deleted", || async {
        let c = claims(&k).await;
        anyhow::ensure!(c == ["data-keep-0", "data-keep-1", "data-keep-2"], "{c:?}");
        Ok(())
    })
    .await
    .unwrap();
    drop(cluster);
}
