//! The garbage collector on a 3-node cluster (`sim` runtime), driven by real kubectl: a
//! ReplicaSet deleted the default way (background) takes its pods and a ConfigMap it owns
//! along; `--cascade=orphan` leaves its pods running without owner references;
//! `--cascade=foreground` keeps the ReplicaSet, marked for deletion, until every dependent
//! that blocks it is gone. Collection DELETEs respect finalizers too.

use flotilla_tests::kubectl::{Kubectl, kubectl_binary};
use flotilla_tests::{CONVERGE, TestCluster, eventually};

fn replica_set(name: &str, replicas: usize) -> String {
    format!(
        "apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      containers:
      - {{name: app, image: busybox}}
"
    )
}

/// A ConfigMap owned by the ReplicaSet `owner` (uid `uid`), held by `finalizers`.
fn owned_config_map(name: &str, owner: &str, uid: &str, finalizers: &str) -> String {
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  finalizers: [{finalizers}]
  ownerReferences:
  - {{apiVersion: apps/v1, kind: ReplicaSet, name: {owner}, uid: {uid}, blockOwnerDeletion: true}}
data: {{k: v}}
"
    )
}

/// `name phase deletionTimestamp owners` of the pods labelled `app=<app>`.
async fn pods(k: &Kubectl, app: &str) -> Vec<String> {
    let (_, out, _) = k
        .run(
            1,
            &[
                "get",
                "pods",
                "-l",
                &format!("app={app}"),
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.status.phase} {.metadata.deletionTimestamp} {.metadata.ownerReferences[*].name}{\"\\n\"}{end}",
            ],
            None,
        )
        .await;
    out.lines().map(str::to_owned).collect()
}

async fn wait_running(k: &Kubectl, app: &str, n: usize) {
    eventually(CONVERGE, &format!("{n} {app} pods running"), || async {
        let p = pods(k, app).await;
        anyhow::ensure!(
            p.len() == n && p.iter().all(|l| l.contains(" Running ")),
            "{p:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owners_take_their_dependents_along_or_leave_them_as_asked() {
    let binary = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let cluster = TestCluster::start("gc", 3, 3, &["--runtime", "sim"])
        .await
        .unwrap();
    let k = Kubectl {
        binary,
        kubeconfig: cluster.kubeconfig_path(),
    };
    eventually(CONVERGE, "the default namespace", || async {
        let (ok, out, err) = k.run(0, &["get", "ns", "default"], None).await;
        anyhow::ensure!(ok && out.contains("Active"), "{out}{err}");
        Ok(())
    })
    .await
    .unwrap();

    // Background (kubectl's default): the pods and an owned ConfigMap go with the set.
    k.ok(0, &["apply", "-f", "-"], Some(&replica_set("bg", 3)))
        .await;
    wait_running(&k, "bg", 3).await;
    let uid = k
        .ok(
            0,
            &["get", "rs", "bg", "-o", "jsonpath={.metadata.uid}"],
            None,
        )
        .await;
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&owned_config_map("bg-config", "bg", &uid, "")),
    )
    .await;
    let out = k.ok(0, &["delete", "rs", "bg"], None).await;
    assert!(out.contains("deleted"), "{out}");
    eventually(CONVERGE, "bg's pods and ConfigMap collected", || async {
        let p = pods(&k, "bg").await;
        anyhow::ensure!(p.is_empty(), "pods left: {p:?}");
        let (ok, out, _) = k.run(2, &["get", "configmap", "bg-config"], None).await;
        anyhow::ensure!(!ok, "bg-config left: {out}");
        Ok(())
    })
    .await
    .unwrap();

    // Orphan: the set goes at once; its pods stay, running, with no owner.
    k.ok(0, &["apply", "-f", "-"], Some(&replica_set("orph", 2)))
        .await;
    wait_running(&k, "orph", 2).await;
    let out = k
        .ok(0, &["delete", "rs", "orph", "--cascade=orphan"], None)
        .await;
    assert!(out.contains("deleted"), "{out}");
    k.fails(1, &["get", "rs", "orph"], None).await;
    let left = pods(&k, "orph").await;
    assert_eq!(left.len(), 2, "{left:?}");
    for line in &left {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[1], "Running", "{line}");
        assert!(fields[2..].iter().all(|f| f.is_empty()), "{line}");
    }
    let refs = k
        .ok(
            2,
            &[
                "get",
                "pods",
                "-l",
                "app=orph",
                "-o",
                "jsonpath={.items[*].metadata.ownerReferences}",
            ],
            None,
        )
        .await;
    assert!(refs.trim().is_empty(), "{refs}");
    // Still orphans a while later: nothing collects them.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(pods(&k, "orph").await.len(), 2);
    k.ok(0, &["delete", "pods", "-l", "app=orph"], None).await;

    // Foreground: the set stays, marked, while a blocking dependent (a ConfigMap held by a
    // finalizer) remains; its pods go; once the ConfigMap is released, the set goes too.
    k.ok(0, &["apply", "-f", "-"], Some(&replica_set("fg", 2)))
        .await;
    wait_running(&k, "fg", 2).await;
    let uid = k
        .ok(
            0,
            &["get", "rs", "fg", "-o", "jsonpath={.metadata.uid}"],
            None,
        )
        .await;
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&owned_config_map(
            "fg-config",
            "fg",
            &uid,
            "example.com/hold",
        )),
    )
    .await;
    let out = k
        .ok(
            0,
            &["delete", "rs", "fg", "--cascade=foreground", "--wait=false"],
            None,
        )
        .await;
    assert!(out.contains("deleted"), "{out}");
    eventually(CONVERGE, "fg's pods gone, fg held", || async {
        let p = pods(&k, "fg").await;
        anyhow::ensure!(p.is_empty(), "pods left: {p:?}");
        let cm = k
            .ok(
                2,
                &[
                    "get",
                    "configmap",
                    "fg-config",
                    "-o",
                    "jsonpath={.metadata.deletionTimestamp}",
                ],
                None,
            )
            .await;
        anyhow::ensure!(!cm.is_empty(), "fg-config not marked for deletion");
        Ok(())
    })
    .await
    .unwrap();
    let rs = k
        .ok(
            1,
            &[
                "get",
                "rs",
                "fg",
                "-o",
                "jsonpath={.metadata.deletionTimestamp} {.metadata.finalizers}",
            ],
            None,
        )
        .await;
    let (ts, finalizers) = rs.split_once(' ').unwrap();
    assert!(!ts.is_empty(), "{rs}");
    assert!(finalizers.contains("foregroundDeletion"), "{rs}");
    k.ok(
        0,
        &[
            "patch",
            "configmap",
            "fg-config",
            "--type=merge",
            "-p",
            "{\"metadata\":{\"finalizers\":null}}",
        ],
        None,
    )
    .await;
    eventually(CONVERGE, "fg deleted", || async {
        let (ok, out, _) = k.run(1, &["get", "rs", "fg"], None).await;
        anyhow::ensure!(!ok, "fg still there: {out}");
        Ok(())
    })
    .await
    .unwrap();

    // A policy the API does not know is refused, as the apiserver refuses it.
    k.ok(0, &["create", "configmap", "kept"], None).await;
    let err = k
        .fails(
            0,
            &[
                "delete",
                "--raw",
                "/api/v1/namespaces/default/configmaps/kept?propagationPolicy=Sideways",
            ],
            None,
        )
        .await;
    assert!(err.contains("Unsupported value"), "{err}");
    k.ok(1, &["get", "configmap", "kept"], None).await;

    // A collection DELETE deletes each object as a DELETE of it would: one held by a
    // finalizer is only marked.
    let batch = "apiVersion: v1
kind: ConfigMap
metadata: {name: plain, labels: {batch: one}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: held, labels: {batch: one}, finalizers: [example.com/hold]}
";
    k.ok(0, &["apply", "-f", "-"], Some(batch)).await;
    k.ok(
        2,
        &[
            "delete",
            "--raw",
            "/api/v1/namespaces/default/configmaps?labelSelector=batch%3Done",
        ],
        None,
    )
    .await;
    k.fails(0, &["get", "configmap", "plain"], None).await;
    let marked = k
        .ok(
            0,
            &[
                "get",
                "configmap",
                "held",
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ],
            None,
        )
        .await;
    assert!(!marked.is_empty(), "held not marked for deletion");
    k.ok(
        0,
        &[
            "patch",
            "configmap",
            "held",
            "--type=merge",
            "-p",
            "{\"metadata\":{\"finalizers\":null}}",
        ],
        None,
    )
    .await;
    k.fails(1, &["get", "configmap", "held"], None).await;

    cluster.stop().await.unwrap();
}
