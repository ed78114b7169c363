//! Cluster formation and linearizable reads, on real `flotilla node` processes.
//!
//! Proves that:
//! - a 3-node cluster forms with 3 voters and one leader that every node agrees on (and that
//!   exactly one node reports itself `Leader`), with all nodes alive in every gossip view;
//! - a 5-node cluster with `--voters 3` ends with exactly 3 voters and 2 learners, and stays so;
//! - a write acknowledged through one node is read back, with its value and revision, by a
//!   linearizable read through each of the other nodes started after the acknowledgement
//!   (for every writer/reader pair, over repeated overwrites of the same key).

use std::time::Duration;

use flotilla_consensus::Read;
use flotilla_tests::{CONVERGE, TestCluster, eventually, roles};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_cluster_forms_and_reads_are_linearizable_through_every_node() {
    let cluster = TestCluster::start("form3", 3, 3, &[]).await.unwrap();
    let leader = cluster.wait_for_leader(CONVERGE).await.unwrap();

    // Three voters, no learners, in the leader's view.
    let status = cluster
        .wait_for_status(CONVERGE, "3 voters", |s| roles(s) == (3, 0))
        .await
        .unwrap();
    assert_eq!(status.raft.leader.as_deref(), Some(leader.as_str()));

    // Every node's own view: same leader; exactly one node is in state Leader; all three are
    // alive gossip members.
    eventually(CONVERGE, "all nodes agree and see each other", || async {
        let mut leaders_by_state = Vec::new();
        for i in 0..cluster.len() {
            let s = cluster.status(i, false).await?;
            anyhow::ensure!(
                s.raft.leader.as_deref() == Some(leader.as_str()),
                "{} sees leader {:?}, expected {leader}",
                s.name,
                s.raft.leader
            );
            if s.raft.state == "Leader" {
                leaders_by_state.push(s.name.clone());
            }
            let alive = s.members.iter().filter(|m| m.alive).count();
            anyhow::ensure!(alive == 3, "{} sees {alive} live members", s.name);
            anyhow::ensure!(s.ready, "{} not ready", s.name);
        }
        anyhow::ensure!(
            leaders_by_state == vec![leader.clone()],
            "nodes in state Leader: {leaders_by_state:?}"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Write through node w, then read linearizably through each other node: every read starts
    // after the write was acknowledged, so it must see that write (or a later one; there is
    // none here).
    let clients: Vec<_> = (0..3).map(|i| cluster.client(i)).collect();
    for round in 0..12u32 {
        let w = (round % 3) as usize;
        let value = format!("value-{round}-via-{w}");
        let resp = clients[w].put("lin/key", value.clone()).await.unwrap();
        assert!(resp.succeeded);
        for (r, client) in clients.iter().enumerate() {
            if r == w {
                continue;
            }
            let got = client.get("lin/key", Read::Linearizable).await.unwrap();
            let kv = got
                .kv
                .unwrap_or_else(|| panic!("round {round}: node {r} does not see the key"));
            assert_eq!(
                String::from_utf8_lossy(&kv.value),
                value,
                "round {round}: stale linearizable read through node {r}"
            );
            assert_eq!(kv.mod_revision, resp.revision, "round {round}, node {r}");
            assert_eq!(kv.version, u64::from(round) + 1);
            assert!(got.revision >= resp.revision);
        }
    }

    // Distinct keys written through each node, all read through each node.
    for (w, client) in clients.iter().enumerate() {
        client
            .put(&format!("lin/by-{w}"), format!("from-{w}"))
            .await
            .unwrap();
    }
    for (r, client) in clients.iter().enumerate() {
        let range = client
            .range("lin/by-", 100, Read::Linearizable)
            .await
            .unwrap();
        let got: Vec<(String, String)> = range
            .kvs
            .iter()
            .map(|kv| {
                (
                    kv.key.clone(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = (0..3)
            .map(|w| (format!("lin/by-{w}"), format!("from-{w}")))
            .collect();
        assert_eq!(got, want, "range through node {r}");
    }

    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_with_three_voters_have_two_learners() {
    let cluster = TestCluster::start("form5", 5, 3, &[]).await.unwrap();
    let status = cluster
        .wait_for_status(CONVERGE, "3 voters and 2 learners", |s| roles(s) == (3, 2))
        .await
        .unwrap();
    let leader = status.raft.leader.clone().expect("a leader");
    let members: Vec<&str> = status
        .raft
        .members
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    for i in 0..cluster.len() {
        assert!(
            members.contains(&cluster.name(i)),
            "{} missing from raft members {members:?}",
            cluster.name(i)
        );
    }
    assert!(
        status
            .raft
            .members
            .iter()
            .any(|m| m.name == leader && m.role == "voter"),
        "the leader {leader} must be a voter: {:?}",
        status.raft.members
    );

    // The voter set does not keep growing: look a few more times while the cluster is idle.
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = cluster
            .wait_for_status(CONVERGE, "a leader view", |_| true)
            .await
            .unwrap();
        assert_eq!(roles(&s), (3, 2), "members: {:?}", s.raft.members);
    }

    // Every node, learners included, agrees on the leader and serves linearizable reads.
    cluster.wait_for_leader(CONVERGE).await.unwrap();
    let resp = cluster.client(0).put("five/k", "v").await.unwrap();
    for i in 0..cluster.len() {
        let got = cluster
            .client(i)
            .get("five/k", Read::Linearizable)
            .await
            .unwrap();
        assert_eq!(
            got.kv.map(|kv| kv.mod_revision),
            Some(resp.revision),
            "node {i}"
        );
    }

    cluster.stop().await.unwrap();
}
