//! DaemonSets driven by real kubectl. On a 3-node cluster (`sim` runtime: placement does not
//! need processes): one pod per node, `kubectl rollout status` after a rolling update that
//! changes every pod's template hash, a nodeSelector that follows node labels, and a node that
//! leaves (stopped and deleted) and joins again. With the `process` runtime: a node that joins
//! a 3-node cluster after the DaemonSet exists gets a running pod of it.

use std::collections::BTreeMap;
use std::time::Duration;

use flotilla_tests::kubectl::{Kubectl, busybox_cluster_first, kubectl_binary};
use flotilla_tests::{CONVERGE, TestCluster, eventually};

fn daemon_set(name: &str, extra_spec: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: {name}}}
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      {extra_spec}
      containers:
      - name: app
        image: {image}
"
    )
}

/// Node → the template hashes of the live (not terminating) pods of `app` there.
async fn pods_by_node(k: &Kubectl, app: &str) -> BTreeMap<String, Vec<String>> {
    let (_, out, _) = k
        .run(
            0,
            &[
                "get",
                "pods",
                "-l",
                &format!("app={app}"),
                "-o",
                "jsonpath={range .items[*]}{.spec.nodeName}={.metadata.labels.controller-revision-hash}={.metadata.deletionTimestamp}{\"\\n\"}{end}",
            ],
            None,
        )
        .await;
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in out.lines() {
        let parts: Vec<&str> = line.split('=').collect();
        if let [node, hash, deleting] = parts[..]
            && deleting.is_empty()
        {
            map.entry(node.to_owned())
                .or_default()
                .push(hash.to_owned());
        }
    }
    map
}

fn nodes_of(map: &BTreeMap<String, Vec<String>>) -> Vec<&str> {
    map.iter()
        .flat_map(|(n, pods)| pods.iter().map(move |_| n.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sets_cover_eligible_nodes_roll_and_follow_nodes_that_come_and_go() {
    let binary = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let mut cluster = TestCluster::start("daemonset", 3, 3, &["--runtime", "sim"])
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

    // One pod on every node, even a cordoned one (daemon pods tolerate unschedulable).
    k.ok(0, &["cordon", "node-3"], None).await;
    k.ok(
        1,
        &["apply", "-f", "-"],
        Some(&daemon_set("agent", "", "busybox:1.36")),
    )
    .await;
    eventually(CONVERGE, "an agent pod on each node", || async {
        let map = pods_by_node(&k, "agent").await;
        anyhow::ensure!(nodes_of(&map) == ["node-1", "node-2", "node-3"], "{map:?}");
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["rollout", "status", "ds/agent", "--timeout=60s"], None)
        .await;
    let out = k.ok(0, &["get", "ds", "agent"], None).await;
    let row: Vec<&str> = out.lines().nth(1).unwrap().split_whitespace().collect();
    // NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE
    assert_eq!(&row[..6], ["agent", "3", "3", "3", "3", "3"], "{out}");
    k.ok(0, &["uncordon", "node-3"], None).await;

    // A new template replaces every pod, one node at a time, and rollout status waits.
    let before = pods_by_node(&k, "agent").await;
    k.ok(0, &["set", "image", "ds/agent", "app=busybox:1.37"], None)
        .await;
    k.ok(2, &["rollout", "status", "ds/agent", "--timeout=90s"], None)
        .await;
    eventually(CONVERGE, "every agent pod on the new template", || async {
        let after = pods_by_node(&k, "agent").await;
        anyhow::ensure!(
            nodes_of(&after) == ["node-1", "node-2", "node-3"]
                && after
                    .iter()
                    .all(|(n, h)| before.get(n).is_some_and(|b| b[0] != h[0])),
            "before {before:?}, after {after:?}"
        );
        Ok(())
    })
    .await
    .unwrap();

    // A nodeSelector: only labelled nodes, following the labels as they change.
    k.ok(0, &["label", "node", "node-2", "disk=ssd"], None)
        .await;
    k.ok(
        0,
        &["apply", "-f", "-"],
        Some(&daemon_set(
            "ssd",
            "nodeSelector: {disk: ssd}",
            "busybox:1.36",
        )),
    )
    .await;
    eventually(CONVERGE, "an ssd pod on node-2 only", || async {
        let map = pods_by_node(&k, "ssd").await;
        anyhow::ensure!(nodes_of(&map) == ["node-2"], "{map:?}");
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["label", "node", "node-3", "disk=ssd"], None)
        .await;
    k.ok(0, &["label", "node", "node-2", "disk-"], None).await;
    eventually(CONVERGE, "the ssd pod moved to node-3", || async {
        let map = pods_by_node(&k, "ssd").await;
        anyhow::ensure!(nodes_of(&map) == ["node-3"], "{map:?}");
        let out = k
            .run(
                0,
                &[
                    "get",
                    "ds",
                    "ssd",
                    "-o",
                    "jsonpath={.status.desiredNumberScheduled}/{.status.currentNumberScheduled}/{.status.numberMisscheduled}",
                ],
                None,
            )
            .await
            .1;
        anyhow::ensure!(out == "1/1/0", "{out}");
        Ok(())
    })
    .await
    .unwrap();

    // A node that leaves loses its pod; when it joins again it gets one.
    cluster
        .cluster
        .stop(2, Duration::from_secs(10))
        .await
        .unwrap();
    k.ok(0, &["delete", "node", "node-3"], None).await;
    eventually(CONVERGE, "agent pods on node-1 and node-2 only", || async {
        let map = pods_by_node(&k, "agent").await;
        anyhow::ensure!(nodes_of(&map) == ["node-1", "node-2"], "{map:?}");
        let (_, out, _) = k
            .run(
                0,
                &[
                    "get",
                    "ds",
                    "agent",
                    "-o",
                    "jsonpath={.status.desiredNumberScheduled}",
                ],
                None,
            )
            .await;
        anyhow::ensure!(out == "2", "desired {out}");
        Ok(())
    })
    .await
    .unwrap();
    cluster.start_node(2).unwrap();
    eventually(CONVERGE, "node-3 back with an agent pod", || async {
        let map = pods_by_node(&k, "agent").await;
        anyhow::ensure!(nodes_of(&map) == ["node-1", "node-2", "node-3"], "{map:?}");
        Ok(())
    })
    .await
    .unwrap();
    // node-3 came back without its label: no ssd pod anywhere.
    eventually(CONVERGE, "no ssd pods", || async {
        let map = pods_by_node(&k, "ssd").await;
        anyhow::ensure!(map.is_empty(), "{map:?}");
        Ok(())
    })
    .await
    .unwrap();
    cluster.stop().await.unwrap();
}

/// Node → the Running pod of `app=agent` there.
async fn running(k: &Kubectl) -> BTreeMap<String, String> {
    k.run(
        0,
        &[
            "get",
            "pods",
            "-l",
            "app=agent",
            "--field-selector",
            "status.phase=Running",
            "-o",
            "jsonpath={range .items[*]}{.spec.nodeName}={.metadata.name}{\"\\n\"}{end}",
        ],
        None,
    )
    .await
    .1
    .lines()
    .filter_map(|l| l.split_once('='))
    .map(|(n, p)| (n.to_owned(), p.to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_later_runs_a_daemon_pod() {
    // Four nodes laid out (certificates, the image), three started.
    let Some((mut cluster, k)) = busybox_cluster_first("daemonset-proc", 4, 3, &[]).await else {
        return;
    };
    let agent = daemon_set(
        "agent",
        "terminationGracePeriodSeconds: 1",
        "busybox:1.36
        command: [sh, -c, 'echo agent on $NODE; while true; do sleep 1; done']
        env:
        - name: NODE
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}",
    );
    k.ok(0, &["apply", "-f", "-"], Some(&agent)).await;
    k.ok(
        1,
        &["rollout", "status", "ds/agent", "--timeout=120s"],
        None,
    )
    .await;
    let before = running(&k).await;
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["node-1", "node-2", "node-3"],
        "{before:?}"
    );

    cluster.start_node(3).unwrap();
    eventually(CONVERGE, "node-4 Ready", || async {
        let (_, out, _) = k.run(0, &["get", "nodes"], None).await;
        anyhow::ensure!(
            out.lines()
                .any(|l| l.starts_with("node-4 ") && l.contains(" Ready ")),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();
    let pod = eventually(CONVERGE, "a Running agent pod on node-4", || async {
        let now = running(&k).await;
        now.get("node-4")
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("{now:?}"))
    })
    .await
    .unwrap();
    // Its container runs there: its log comes through node-4's kubelet.
    let log = k.ok(2, &["logs", &pod], None).await;
    assert_eq!(log.trim(), "agent on node-4", "{log}");
    // The others kept theirs, and the DaemonSet counts four.
    let after = running(&k).await;
    for (node, pod) in &before {
        assert_eq!(after.get(node), Some(pod), "{after:?}");
    }
    eventually(CONVERGE, "the DaemonSet at 4 of 4", || async {
        let out = k.ok(0, &["get", "ds", "agent"], None).await;
        let row: Vec<String> = out
            .lines()
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        // NAME DESIRED CURRENT READY UP-TO-DATE AVAILABLE
        anyhow::ensure!(
            row.get(1..6) == Some(&["4", "4", "4", "4", "4"].map(String::from)[..]),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();
    k.ok(0, &["delete", "ds", "agent"], None).await;
}
