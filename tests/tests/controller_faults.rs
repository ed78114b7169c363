//! Controllers under faults, on 3 nodes (`sim` runtime, fault plane on), with real kubectl:
//! - the node owning a ReplicaSet's shard is partitioned away while the set is scaled: the
//!   shard moves to the majority side, which does the scaling, and at no point are there
//!   more active pods than the set asks for (the cut-off owner cannot write: its lease is
//!   taken over and it has no quorum);
//! - the Raft leader is SIGKILLed in the middle of a rolling update, which still completes.

use std::time::Duration;

use flotilla_consensus::Read;
use flotilla_tests::kubectl::{Kubectl, kubectl_binary};
use flotilla_tests::{CONVERGE, TestCluster, eventually};

const RS: &str = "apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: web}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: app, image: busybox}]
";

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: roll}
spec:
  replicas: 6
  selector: {matchLabels: {app: roll}}
  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}
  template:
    metadata: {labels: {app: roll}}
    spec:
      containers: [{name: app, image: busybox:1}]
";

/// The controller shard of an object: FNV-1a of `namespace/name` modulo the shard count, as
/// `actors/src/controllers/shards.rs` computes it (32 shards by default).
fn shard_of(key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h % 32
}

/// Active (not terminating) pods of `app`, as seen through `node`.
async fn active(k: &Kubectl, node: usize, app: &str) -> Option<usize> {
    let (ok, out, _) = k
        .run(
            node,
            &["get", "pods", "-l", &format!("app={app}"), "-o", "jsonpath={range .items[*]}{.metadata.name} {.metadata.deletionTimestamp}{\"\\n\"}{end}"],
            None,
        )
        .await;
    ok.then(|| {
        out.lines()
            .filter(|l| l.split_whitespace().count() == 1)
            .count()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_shard_owner_is_replaced_without_excess_pods_and_a_rollout_survives_the_leader()
 {
    let binary = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let mut cluster =
        TestCluster::start("controller-faults", 3, 3, &["--runtime", "sim", "--chaos"])
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
    k.ok(0, &["apply", "-f", "-"], Some(RS)).await;
    eventually(CONVERGE, "4 pods", || async {
        anyhow::ensure!(active(&k, 1, "web").await == Some(4));
        Ok(())
    })
    .await
    .unwrap();

    // Who owns the ReplicaSet's shard now.
    let lease_key = format!("/flotilla/shards/{:04}", shard_of("default/web"));
    let lease = cluster
        .client(0)
        .get(&lease_key, Read::Linearizable)
        .await
        .unwrap()
        .kv
        .expect("the shard has a lease");
    let owner: serde_json::Value = serde_json::from_slice(&lease.value).unwrap();
    let owner = owner["owner"].as_str().unwrap().to_owned();
    let cut = cluster.index_of(&owner).unwrap();
    let others: Vec<usize> = (0..3).filter(|i| *i != cut).collect();
    eprintln!("{owner} owns shard {lease_key}; partitioning it away");
    cluster.partition(&[cut]).await.unwrap();
    // Scale through the majority side and watch the count while the shard moves.
    eventually(CONVERGE, "scaled through the majority", || async {
        let (ok, out, err) = k
            .run(others[0], &["scale", "rs", "web", "--replicas=7"], None)
            .await;
        anyhow::ensure!(ok, "{out}{err}");
        Ok(())
    })
    .await
    .unwrap();
    let mut most = 0;
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        if let Some(n) = active(&k, others[1], "web").await {
            most = most.max(n);
            if n == 7 {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the majority never scaled to 7 (most seen: {most})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during: serde_json::Value = serde_json::from_slice(
        &cluster
            .client(others[0])
            .get(&lease_key, Read::Linearizable)
            .await
            .unwrap()
            .kv
            .unwrap()
            .value,
    )
    .unwrap();
    assert_ne!(
        during["owner"],
        owner.as_str(),
        "the shard moved to the majority: {during}"
    );
    // Settled: the count stays at 7 for a while after the partition heals, too.
    cluster.heal().await.unwrap();
    for _ in 0..20 {
        if let Some(n) = active(&k, 0, "web").await {
            most = most.max(n);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most <= 7, "saw {most} active pods for a set of 7");
    let new_owner: serde_json::Value = serde_json::from_slice(
        &cluster
            .client(others[0])
            .get(&lease_key, Read::Linearizable)
            .await
            .unwrap()
            .kv
            .unwrap()
            .value,
    )
    .unwrap();
    eprintln!("the shard's lease is now {new_owner}");

    // A rolling update, and the Raft leader dies in the middle of it.
    k.ok(0, &["apply", "-f", "-"], Some(DEPLOYMENT)).await;
    let (ok, out, err) = k
        .run(
            1,
            &["rollout", "status", "deployment/roll", "--timeout=120s"],
            None,
        )
        .await;
    assert!(ok, "{out}{err}");
    let leader = cluster.leader_index().await.unwrap();
    let survivor = (0..3).find(|i| *i != leader).unwrap();
    k.ok(
        survivor,
        &["set", "image", "deployment/roll", "app=busybox:2"],
        None,
    )
    .await;
    cluster.kill(leader).await.unwrap();
    let (ok, out, err) = k
        .run(
            survivor,
            &["rollout", "status", "deployment/roll", "--timeout=120s"],
            None,
        )
        .await;
    assert!(ok && out.contains("successfully rolled out"), "{out}{err}");
    let images = k
        .ok(
            survivor,
            &[
                "get",
                "deployment",
                "roll",
                "-o",
                "jsonpath={.status.updatedReplicas}/{.status.availableReplicas}",
            ],
            None,
        )
        .await;
    assert_eq!(images, "6/6");
}
