//! Deployments end to end with real kubectl and the `process` runtime on 3 nodes: a
//! Deployment makes a ReplicaSet whose pods are spread over the nodes and run; it scales up
//! and down; a new image rolls out with maxUnavailable 0 while a watch checks that available
//! pods never drop below the desired count; `rollout status` completes and `rollout undo`
//! brings the previous template back, reusing its ReplicaSet.
//!
//! The busybox image comes from `scripts/build-busybox-image.sh`; without it the test says so
//! and stops.

use std::collections::BTreeSet;
use std::time::Duration;

use flotilla_tests::kubectl::{Kubectl, busybox_cluster};
use flotilla_tests::{CONVERGE, eventually};

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  strategy:
    type: RollingUpdate
    rollingUpdate: {maxSurge: 1, maxUnavailable: 0}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: app
        image: busybox:1.36
        command: [sh, -c, 'while true; do sleep 1; done']
";

async fn jsonpath(k: &Kubectl, node: usize, what: &[&str], path: &str) -> String {
    let mut args: Vec<&str> = vec!["get"];
    args.extend_from_slice(what);
    let expr = format!("jsonpath={path}");
    args.extend(["-o", &expr]);
    k.run(node, &args, None).await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_spread_scale_roll_out_without_unavailability_and_undo() {
    let Some((_cluster, k)) = busybox_cluster("deployments", 3, &[]).await else {
        return;
    };

    k.ok(0, &["apply", "-f", "-"], Some(DEPLOYMENT)).await;
    let (ok, out, err) = k
        .run(
            1,
            &["rollout", "status", "deployment/web", "--timeout=120s"],
            None,
        )
        .await;
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");
    let rs = jsonpath(&k, 2, &["rs", "-l", "app=web"], "{.items[*].metadata.name}").await;
    assert!(
        rs.starts_with("web-") && !rs.contains(' '),
        "one ReplicaSet: {rs}"
    );
    let nodes: BTreeSet<String> = jsonpath(
        &k,
        0,
        &["pods", "-l", "app=web"],
        "{.items[*].spec.nodeName}",
    )
    .await
    .split_whitespace()
    .map(str::to_owned)
    .collect();
    assert_eq!(nodes.len(), 3, "three pods on three nodes: {nodes:?}");
    let phases = jsonpath(
        &k,
        0,
        &["pods", "-l", "app=web"],
        "{.items[*].status.phase}",
    )
    .await;
    assert_eq!(phases, "Running Running Running");

    // Scale up and down.
    for n in ["5", "2"] {
        k.ok(
            1,
            &["scale", "deployment/web", &format!("--replicas={n}")],
            None,
        )
        .await;
        eventually(CONVERGE, &format!("{n} replicas"), || async {
            let got = jsonpath(
                &k,
                2,
                &["deployment", "web"],
                "{.status.availableReplicas}/{.status.replicas}",
            )
            .await;
            let pods = jsonpath(
                &k,
                0,
                &[
                    "pods",
                    "-l",
                    "app=web",
                    "--field-selector=status.phase=Running",
                ],
                "{.items[*].metadata.name}",
            )
            .await;
            anyhow::ensure!(
                got == format!("{n}/{n}") && pods.split_whitespace().count().to_string() == n,
                "{got} {pods}"
            );
            Ok(())
        })
        .await
        .unwrap();
    }
    k.ok(1, &["scale", "deployment/web", "--replicas=3"], None)
        .await;
    let (ok, out, err) = k
        .run(
            1,
            &["rollout", "status", "deployment/web", "--timeout=120s"],
            None,
        )
        .await;
    assert!(ok, "{out}{err}");

    // A new image, watched: availability never drops below 3.
    let watcher = k.spawn(&[
        "get",
        "deployment",
        "web",
        "-w",
        "-o",
        "jsonpath={.status.availableReplicas} {.status.updatedReplicas}{\"\\n\"}",
    ]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    k.ok(
        0,
        &["set", "image", "deployment/web", "app=busybox:latest"],
        None,
    )
    .await;
    let (ok, out, err) = k
        .run(
            2,
            &["rollout", "status", "deployment/web", "--timeout=120s"],
            None,
        )
        .await;
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut watcher = watcher;
    let _ = watcher.start_kill();
    let seen =
        String::from_utf8_lossy(&watcher.wait_with_output().await.unwrap().stdout).into_owned();
    let available: Vec<u32> = seen
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(available.len() >= 3, "the watch saw the rollout: {seen}");
    assert!(
        available.iter().all(|a| *a >= 3),
        "availability dropped during the rollout: {seen}"
    );
    let images = jsonpath(
        &k,
        1,
        &["pods", "-l", "app=web"],
        "{.items[*].spec.containers[0].image}",
    )
    .await;
    eventually(CONVERGE, "only new pods left", || async {
        let images = jsonpath(
            &k,
            1,
            &["pods", "-l", "app=web"],
            "{.items[*].spec.containers[0].image}",
        )
        .await;
        anyhow::ensure!(
            images == "busybox:latest busybox:latest busybox:latest",
            "{images}"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#} (first seen: {images})"));
    let history = k
        .ok(0, &["rollout", "history", "deployment/web"], None)
        .await;
    assert!(history.contains('1') && history.contains('2'), "{history}");

    // Undo: the first template is back, in its first ReplicaSet.
    k.ok(1, &["rollout", "undo", "deployment/web"], None).await;
    let (ok, out, err) = k
        .run(
            0,
            &["rollout", "status", "deployment/web", "--timeout=120s"],
            None,
        )
        .await;
    assert!(ok, "{out}{err}");
    let image = jsonpath(
        &k,
        2,
        &["deployment", "web"],
        "{.spec.template.spec.containers[0].image}",
    )
    .await;
    assert_eq!(image, "busybox:1.36");
    let active = jsonpath(
        &k,
        2,
        &["rs", "-l", "app=web"],
        "{range .items[?(@.spec.replicas>0)]}{.metadata.name}{end}",
    )
    .await;
    assert_eq!(active, rs, "the first ReplicaSet serves again");
    let revision = jsonpath(
        &k,
        0,
        &["deployment", "web"],
        "{.metadata.annotations.deployment\\.kubernetes\\.io/revision}",
    )
    .await;
    assert_eq!(revision, "3");

    k.ok(0, &["delete", "deployment", "web"], None).await;
}
