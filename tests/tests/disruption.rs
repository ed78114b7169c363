//! PodDisruptionBudgets end to end with real kubectl and the `process` runtime on 3 nodes:
//! - `kubectl create pdb` (a protobuf body) works; `kubectl get pdb` prints the apiserver's columns, and the disruption controller fills in
//!   the status (3 expected, 2 desired, 1 allowed for a 3-replica Deployment and
//!   minAvailable 2);
//! - a budget with both minAvailable and maxUnavailable is refused with the field path;
//! - `kubectl drain` of a node holding one of its pods succeeds, and a watch of the pods never
//!   sees fewer than 2 of them ready once all 3 were;
//! - with maxUnavailable 0 a drain fails with the disruption-budget message and the pod stays;
//! - a pod two budgets select cannot be evicted (500).
//!
//! The busybox image comes from `scripts/build-busybox-image.sh`; without it the test says so
//! and stops.

use std::collections::BTreeMap;

use flotilla_tests::kubectl::{Kubectl, busybox_cluster};
use flotilla_tests::{CONVERGE, eventually};

const WEB: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        podAntiAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            podAffinityTerm:
              topologyKey: kubernetes.io/hostname
              labelSelector: {matchLabels: {app: web}}
      containers:
      - name: app
        image: busybox:1.36
        command: [sh, -c, 'while true; do sleep 1; done']
";

const NONE_UNAVAILABLE: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  maxUnavailable: 0
  selector: {matchLabels: {app: web}}
";

const BOTH: &str = "apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: both}
spec:
  minAvailable: 1
  maxUnavailable: 1
  selector: {matchLabels: {app: web}}
";

/// `name phase ready deletionTimestamp` of each `app=web` pod.
async fn web_pods(k: &Kubectl) -> Vec<Vec<String>> {
    let out = k
        .ok(
            0,
            &[
                "get",
                "pods",
                "-l",
                "app=web",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}{end}",
            ],
            None,
        )
        .await;
    out.lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

async fn all_ready(k: &Kubectl) -> anyhow::Result<Vec<Vec<String>>> {
    let pods = web_pods(k).await;
    let ready = pods
        .iter()
        .filter(|p| p.len() == 4 && p[2] == "Running" && p[3] == "True")
        .count();
    anyhow::ensure!(ready == 3 && pods.len() == 3, "{pods:?}");
    Ok(pods)
}

/// The budget's `disruptionsAllowed expectedPods desiredHealthy currentHealthy`.
async fn budget(k: &Kubectl) -> String {
    k.run(
        0,
        &[
            "get",
            "pdb",
            "web",
            "-o",
            "jsonpath={.status.disruptionsAllowed} {.status.expectedPods} {.status.desiredHealthy} {.status.currentHealthy}",
        ],
        None,
    )
    .await
    .1
}

#[tokio::test(flavor = "multi_thread")]
async fn disruption_budgets_limit_drains_and_evictions() {
    let Some((cluster, k)) = busybox_cluster("disruption", 3, &[]).await else {
        return;
    };
    k.ok(0, &["apply", "-f", "-"], Some(WEB)).await;
    eventually(CONVERGE, "3 ready web pods", || all_ready(&k))
        .await
        .unwrap();

    // Validation names the field.
    let err = k.fails(0, &["apply", "-f", "-"], Some(BOTH)).await;
    assert!(
        err.contains("spec: Invalid value")
            && err.contains("minAvailable and maxUnavailable cannot be both set"),
        "{err}"
    );

    // `kubectl create pdb` sends a protobuf body.
    k.ok(
        0,
        &[
            "create",
            "pdb",
            "web",
            "--selector=app=web",
            "--min-available=2",
        ],
        None,
    )
    .await;
    eventually(CONVERGE, "the budget's status", || async {
        let b = budget(&k).await;
        anyhow::ensure!(b == "1 3 2 3", "{b}");
        Ok(())
    })
    .await
    .unwrap();
    let table = k.ok(1, &["get", "pdb"], None).await;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "MIN",
            "AVAILABLE",
            "MAX",
            "UNAVAILABLE",
            "ALLOWED",
            "DISRUPTIONS",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["web", "2", "N/A", "1"], "{table}");

    // Drain the node of one pod while a watch records every pod change.
    let pods = all_ready(&k).await.unwrap();
    let node = pods[0][1].clone();
    let mut watch = k.spawn(&[
        "get",
        "pods",
        "-l",
        "app=web",
        "-w",
        "-o",
        "jsonpath={.metadata.name} {.status.phase} {.status.conditions[?(@.type==\"Ready\")].status} {.metadata.deletionTimestamp}{\"\\n\"}",
    ]);
    let (ok, out, err) = k
        .run(
            0,
            &[
                "drain",
                &node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=120s",
            ],
            None,
        )
        .await;
    assert!(ok, "drain failed:\n{out}\n{err}");
    assert!(
        out.contains(&format!("node/{node} drained")),
        "{out}\n{err}"
    );
    let after = eventually(CONVERGE, "3 ready web pods after the drain", || {
        all_ready(&k)
    })
    .await
    .unwrap();
    assert!(after.iter().all(|p| p[1] != node), "{after:?}");
    let _ = watch.start_kill();
    let lines = String::from_utf8_lossy(&watch.wait_with_output().await.unwrap().stdout)
        .lines()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    // Ready pods as the watch saw them; from the moment all 3 were ready, never fewer than 2.
    let mut ready: BTreeMap<String, bool> = BTreeMap::new();
    let mut armed = false;
    for line in &lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let Some(name) = f.first() else { continue };
        let is_ready = f.len() == 3 && f[1] == "Running" && f[2] == "True";
        ready.insert((*name).to_owned(), is_ready);
        let n = ready.values().filter(|r| **r).count();
        armed |= n == 3;
        assert!(
            !armed || n >= 2,
            "only {n} ready at {line:?} in\n{lines:#?}"
        );
    }
    assert!(armed, "{lines:#?}");
    k.ok(0, &["uncordon", &node], None).await;

    // No disruption allowed: the drain gives up and the pod stays.
    k.ok(0, &["delete", "pdb", "web"], None).await;
    k.ok(0, &["apply", "-f", "-"], Some(NONE_UNAVAILABLE)).await;
    eventually(CONVERGE, "the strict budget's status", || async {
        let b = budget(&k).await;
        anyhow::ensure!(b == "0 3 3 3", "{b}");
        Ok(())
    })
    .await
    .unwrap();
    let pods = all_ready(&k).await.unwrap();
    let (victim, node) = (pods[0][0].clone(), pods[0][1].clone());
    let (ok, out, err) = k
        .run(
            0,
            &[
                "drain",
                &node,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                "--timeout=10s",
            ],
            None,
        )
        .await;
    assert!(!ok, "drain should have failed:\n{out}\n{err}");
    assert!(
        err.contains("Cannot evict pod as it would violate the pod's disruption budget."),
        "{out}\n{err}"
    );
    let still = all_ready(&k).await.unwrap();
    assert!(still.iter().any(|p| p[0] == victim), "{still:?}");
    let row = k.ok(0, &["get", "pdb", "web", "--no-headers"], None).await;
    let row: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&row[..4], ["web", "N/A", "0", "0"], "{row:?}");

    // A pod two budgets select cannot be evicted at all (500, as the apiserver).
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&NONE_UNAVAILABLE.replace("name: web", "name: extra")),
    )
    .await;
    let body = format!(
        "{{\"apiVersion\": \"policy/v1\", \"kind\": \"Eviction\", \"metadata\": {{\"name\": \"{victim}\"}}}}"
    );
    let err = k
        .fails(
            0,
            &[
                "create",
                "--raw",
                &format!("/api/v1/namespaces/default/pods/{victim}/eviction"),
                "-f",
                "-",
            ],
            Some(&body),
        )
        .await;
    assert!(err.contains("more than one PodDisruptionBudget"), "{err}");
    drop(cluster);
}
