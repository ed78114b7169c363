//! The kubelet on every node, with the `sim` runtime: pods bound to a node (by
//! `spec.nodeName`; the scheduler comes with the controllers) run there and report status
//! through the API as kubectl shows it; a missing ConfigMap key holds a container back with
//! the reason; deletion is graceful and the kubelet removes the object; a pod moved to another
//! node's name leaves its first node.

use flotilla_tests::kubectl::{Kubectl, kubectl_binary};
use flotilla_tests::{CONVERGE, TestCluster, eventually};

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  nodeName: node-2
  containers:
  - name: app
    image: busybox
    env:
    - {name: MODE, value: fast}
  - name: sidecar
    image: busybox
";

/// A 3-node cluster with `args`, once its default namespace is there.
async fn start(name: &str, args: &[&str]) -> (TestCluster, Kubectl) {
    let binary = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let cluster = TestCluster::start(name, 3, 3, args).await.unwrap();
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
    (cluster, k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_runs_pods_bound_to_its_node_and_reports_status() {
    let (_cluster, k) = start("kubelet-sim", &["--runtime", "sim"]).await;

    k.ok(0, &["apply", "-f", "-"], Some(POD)).await;
    // Running on node-2 with both containers ready, an IP, seen through every node.
    for node in 0..3 {
        eventually(CONVERGE, "web Running 2/2 on node-2", || async {
            let (ok, out, err) = k
                .run(node, &["get", "pod", "web", "-o", "wide"], None)
                .await;
            anyhow::ensure!(ok, "{err}");
            anyhow::ensure!(
                out.contains("2/2") && out.contains("Running") && out.contains("node-2"),
                "{out}"
            );
            Ok(())
        })
        .await
        .unwrap();
    }
    let status = k
        .ok(
            1,
            &[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.status.phase} {.status.hostIP} {.status.conditions[?(@.type==\"Ready\")].status} {.status.containerStatuses[*].restartCount}",
            ],
            None,
        )
        .await;
    assert_eq!(status, "Running 127.0.0.1 True 0 0");
    let ip = k
        .ok(
            2,
            &["get", "pod", "web", "-o", "jsonpath={.status.podIP}"],
            None,
        )
        .await;
    assert!(ip.starts_with("10.250."), "{ip}");

    // A container whose env needs a missing ConfigMap key waits, with the reason.
    let waiting = "apiVersion: v1
kind: Pod
metadata: {name: needs-config}
spec:
  nodeName: node-3
  containers:
  - name: app
    image: busybox
    env:
    - name: LEVEL
      valueFrom:
        configMapKeyRef: {name: settings, key: level}
";
    k.ok(1, &["apply", "-f", "-"], Some(waiting)).await;
    eventually(CONVERGE, "CreateContainerConfigError", || async {
        let (_, out, _) = k.run(2, &["get", "pod", "needs-config"], None).await;
        anyhow::ensure!(out.contains("CreateContainerConfigError"), "{out}");
        Ok(())
    })
    .await
    .unwrap();
    // Once the ConfigMap exists, the container starts.
    k.ok(
        0,
        &["create", "configmap", "settings", "--from-literal=level=3"],
        None,
    )
    .await;
    eventually(CONVERGE, "needs-config Running", || async {
        let (_, out, _) = k.run(1, &["get", "pod", "needs-config"], None).await;
        anyhow::ensure!(out.contains("Running") && out.contains("1/1"), "{out}");
        Ok(())
    })
    .await
    .unwrap();

    // Graceful deletion: the API marks the pod, node-2's kubelet stops it and removes it;
    // kubectl waits until it is gone.
    let out = k.ok(0, &["delete", "pod", "web"], None).await;
    assert!(out.contains("pod \"web\" deleted"), "{out}");
    k.fails(2, &["get", "pod", "web"], None).await;
    let out = k.ok(1, &["delete", "pod", "needs-config"], None).await;
    assert!(out.contains("deleted"), "{out}");
    let left = k.ok(2, &["get", "pods", "-o", "name"], None).await;
    assert!(left.trim().is_empty(), "{left}");
}

/// Events expire `--event-ttl-seconds` after they were last seen (the apiserver's
/// `--event-ttl`): the pod's `Started` event is listed, then gone while the pod runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_expire_after_the_ttl() {
    let (_cluster, k) = start(
        "event-ttl",
        &["--runtime", "sim", "--event-ttl-seconds", "10"],
    )
    .await;
    k.ok(0, &["apply", "-f", "-"], Some(POD)).await;
    let started_events = || async {
        let (_, out, _) = k.run(1, &["get", "events", "-o", "json"], None).await;
        let list: serde_json::Value = serde_json::from_str(&out)?;
        anyhow::Ok(
            list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["involvedObject"]["name"] == "web" && e["reason"] == "Started")
                .count(),
        )
    };
    eventually(CONVERGE, "the pod's Started events", || async {
        anyhow::ensure!(started_events().await? > 0, "none yet");
        Ok(())
    })
    .await
    .unwrap();
    eventually(CONVERGE, "the events expired", || async {
        let n = started_events().await?;
        anyhow::ensure!(n == 0, "{n} left");
        Ok(())
    })
    .await
    .unwrap();
    let (_, out, _) = k.run(0, &["get", "pod", "web"], None).await;
    assert!(out.contains("Running"), "{out}");
}
