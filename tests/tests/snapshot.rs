//! Snapshots bound the log, and a node that was down long catches up from a snapshot.
//!
//! Proves that, with `--snapshot-every 100 --log-keep-behind-snapshot 10`:
//! - after many writes the leader has built a snapshot and purged its log past the point where
//!   a stopped follower left off (so the follower cannot catch up from the log alone);
//! - the follower, restarted, installs the snapshot, then serves every value (local reads on
//!   it) and reaches the leader's applied index;
//! - the snapshot survives a restart of the whole cluster.

use flotilla_consensus::Read;
use flotilla_tests::{CONVERGE, TestCluster, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_down_long_catches_up_from_a_snapshot() {
    let mut cluster = TestCluster::start(
        "snapshot",
        3,
        3,
        &[
            "--snapshot-every",
            "100",
            "--log-keep-behind-snapshot",
            "10",
        ],
    )
    .await
    .unwrap();
    let leader = cluster.leader_index().await.unwrap();
    let follower = (0..3).find(|i| *i != leader).unwrap();
    let writer = cluster.client(leader);

    writer.put("/snap/before", b"0".to_vec()).await.unwrap();
    let stopped_at = cluster
        .status(follower, false)
        .await
        .unwrap()
        .raft
        .applied_index
        .unwrap_or(0);
    cluster.kill(follower).await.unwrap();

    // Far more entries than one snapshot interval while the follower is away.
    for i in 0..600u32 {
        writer
            .put(&format!("/snap/k{i:04}"), i.to_string().into_bytes())
            .await
            .unwrap();
    }
    let leader_view = eventually(CONVERGE, "a snapshot and a purged log", || async {
        let s = cluster.status(leader, false).await?;
        let purged = s.raft.purged_index.unwrap_or(0);
        anyhow::ensure!(
            s.raft.snapshot_index.is_some() && purged > stopped_at,
            "snapshot {:?}, purged {purged}, follower stopped at {stopped_at}",
            s.raft.snapshot_index
        );
        Ok(s)
    })
    .await
    .unwrap();
    let target = leader_view.raft.applied_index.unwrap_or(0);

    cluster.start_node(follower).unwrap();
    let caught_up = eventually(CONVERGE, "the follower to catch up", || async {
        let s = cluster.status(follower, false).await?;
        anyhow::ensure!(
            s.raft.applied_index.unwrap_or(0) >= target,
            "applied {:?} < {target}",
            s.raft.applied_index
        );
        Ok(s)
    })
    .await
    .unwrap();
    assert!(
        caught_up.raft.snapshot_index.unwrap_or(0) > stopped_at,
        "the follower should hold a snapshot newer than where it stopped: {:?}",
        caught_up.raft
    );
    let local = cluster.client(follower);
    for i in (0..600u32).step_by(37) {
        let got = local
            .get(&format!("/snap/k{i:04}"), Read::Local)
            .await
            .unwrap();
        assert_eq!(got.kv.map(|kv| kv.value), Some(i.to_string().into_bytes()));
    }
    let range = local
        .range("/snap/", usize::MAX, Read::Local)
        .await
        .unwrap();
    assert_eq!(range.kvs.len(), 601);

    // Everything, snapshot included, survives a full restart.
    cluster
        .stop_all(std::time::Duration::from_secs(10))
        .await
        .unwrap();
    cluster.start_all().unwrap();
    cluster.wait_for_leader(CONVERGE).await.unwrap();
    for i in 0..3 {
        let got = cluster
            .client(i)
            .get("/snap/k0599", Read::Linearizable)
            .await
            .unwrap();
        assert_eq!(got.kv.map(|kv| kv.value), Some(b"599".to_vec()));
    }
    cluster.stop().await.unwrap();
}
