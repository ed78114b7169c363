//! Idle soak: an idle 5-node cluster never reports a member dead.
//!
//! Proves that the gossip failure detector has no false positives on an idle cluster: polled
//! every few seconds for 10 minutes, every node sees all 5 members alive, the voter set stays
//! at 3 voters and 2 learners, and the leader does not change.
//!
//! Ignored by default (it takes 10 minutes); run it with
//! `cargo test -p flotilla-tests --test soak -- --ignored`. `FLOTILLA_SOAK_SECS` shortens or
//! lengthens it.

use std::time::Duration;

use flotilla_tests::{CONVERGE, TestCluster, roles};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10-minute soak; run with --ignored"]
async fn idle_five_node_cluster_never_reports_a_member_dead() {
    let secs: u64 = std::env::var("FLOTILLA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let cluster = TestCluster::start("soak", 5, 3, &[]).await.unwrap();
    cluster
        .wait_for_status(CONVERGE, "3 voters and 2 learners", |s| roles(s) == (3, 2))
        .await
        .unwrap();
    let leader = cluster.wait_for_leader(CONVERGE).await.unwrap();
    // Let gossip settle: every node sees all five alive.
    flotilla_tests::eventually(CONVERGE, "full gossip view everywhere", || async {
        for i in 0..5 {
            let s = cluster.status(i, false).await?;
            let alive = s.members.iter().filter(|m| m.alive).count();
            anyhow::ensure!(alive == 5, "{} sees {alive} alive", s.name);
        }
        Ok(())
    })
    .await
    .unwrap();

    let end = Instant::now() + Duration::from_secs(secs);
    let mut polls = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(3)).await;
        for i in 0..5 {
            let s = cluster.status(i, false).await.unwrap();
            assert_eq!(s.members.len(), 5, "{}: {:?}", s.name, s.members);
            for m in &s.members {
                assert!(
                    m.alive,
                    "{} reports {} dead after {polls} polls",
                    s.name, m.name
                );
            }
            assert_eq!(
                s.raft.leader.as_deref(),
                Some(leader.as_str()),
                "{}",
                s.name
            );
        }
        let s = cluster
            .wait_for_status(CONVERGE, "a leader view", |_| true)
            .await
            .unwrap();
        assert_eq!(roles(&s), (3, 2));
        polls += 1;
    }
    eprintln!("{polls} polls, no member ever reported dead");
    cluster.stop().await.unwrap();
}
