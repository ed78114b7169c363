//! Voter automation and `cluster remove`, on a 5-node cluster of real processes.
//!
//! Proves that, with `--voters 3 --dead-voter-grace-secs 3`:
//! - the cluster forms with 3 voters and 2 learners;
//! - after a voter is SIGKILLed for good, the voter set becomes 3 voters that are all alive in
//!   gossip, the dead node being demoted to learner (never dropped without a replacement);
//! - `flotilla cluster remove NAME` (the CLI binary) takes the dead node out of the Raft
//!   membership, and `POST /flotilla/cluster/remove?node=NAME` takes out a live learner;
//!   removing a node that is not a member is refused;
//! - removed nodes stay out, even while one keeps gossiping and the other is restarted, and
//!   the remaining three voters keep serving writes and linearizable reads.

use std::time::Duration;

use flotilla_chaos::http::HttpClient;
use flotilla_consensus::Read;
use flotilla_tests::{CONVERGE, TestCluster, roles, run_cli, voter_names};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_voter_is_replaced_and_removed_nodes_stay_out() {
    let mut cluster = TestCluster::start("members", 5, 3, &["--dead-voter-grace-secs", "3"])
        .await
        .unwrap();
    let status = cluster
        .wait_for_status(CONVERGE, "3 voters and 2 learners", |s| roles(s) == (3, 2))
        .await
        .unwrap();
    let leader = status.raft.leader.clone().unwrap();
    let voters = voter_names(&status);
    let victim_name = voters.iter().find(|v| **v != leader).unwrap().clone();
    let victim = cluster.index_of(&victim_name).unwrap();
    eprintln!("voters {voters:?}, leader {leader}, killing {victim_name}");

    cluster.kill(victim).await.unwrap();
    let status = cluster
        .wait_for_status(
            CONVERGE,
            "3 live voters, the dead one demoted to learner",
            |s| {
                let voters = voter_names(s);
                voters.len() == 3
                    && !voters.contains(&victim_name)
                    && voters
                        .iter()
                        .all(|v| s.members.iter().any(|m| &m.name == v && m.alive))
                    && s.raft
                        .members
                        .iter()
                        .any(|m| m.name == victim_name && m.role == "learner")
            },
        )
        .await
        .unwrap();
    let new_voters = voter_names(&status);
    let learner_name = status
        .raft
        .members
        .iter()
        .find(|m| m.role == "learner" && m.name != victim_name)
        .map(|m| m.name.clone())
        .expect("one live learner left");
    eprintln!("voters now {new_voters:?}; live learner {learner_name}");

    // Remove the dead node with the CLI, through some live node.
    let live = (0..cluster.len())
        .find(|i| *i != victim && cluster.is_running(*i))
        .unwrap();
    let server = cluster.layout.api_url(live);
    let (ok, stdout, stderr) = run_cli(&["cluster", "remove", &victim_name, "--server", &server])
        .await
        .unwrap();
    assert!(ok, "cluster remove failed: {stdout}\n{stderr}");

    // Remove the live learner over HTTP.
    let http = HttpClient::default();
    let resp = http
        .request(
            "POST",
            &format!("{server}/flotilla/cluster/remove?node={learner_name}"),
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    // A node that is not a member cannot be removed.
    let resp = http
        .request(
            "POST",
            &format!("{server}/flotilla/cluster/remove?node=no-such-node"),
            None,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_ne!(resp.status, 200, "removing a non-member succeeded");

    let gone = |s: &flotilla_chaos::NodeStatus| {
        !s.raft
            .members
            .iter()
            .any(|m| m.name == victim_name || m.name == learner_name)
    };
    let status = cluster
        .wait_for_status(CONVERGE, "the removed nodes out of the membership", |s| {
            gone(s) && roles(s) == (3, 0)
        })
        .await
        .unwrap();
    assert_eq!(voter_names(&status), new_voters);

    // They stay out: the removed learner is still running and gossiping, and the dead node
    // comes back; automation must not add either again.
    cluster.start_node(victim).unwrap();
    for _ in 0..15 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = cluster
            .wait_for_status(CONVERGE, "a leader view", |_| true)
            .await
            .unwrap();
        assert!(gone(&s), "a removed node is back: {:?}", s.raft.members);
        assert_eq!(voter_names(&s), new_voters);
    }

    // The three remaining voters serve writes and linearizable reads.
    let members: Vec<usize> = new_voters
        .iter()
        .map(|n| cluster.index_of(n).unwrap())
        .collect();
    let resp = cluster
        .client(members[0])
        .put("members/after", "ok")
        .await
        .unwrap();
    for &i in &members {
        let got = cluster
            .client(i)
            .get("members/after", Read::Linearizable)
            .await
            .unwrap();
        assert_eq!(got.kv.map(|kv| kv.mod_revision), Some(resp.revision));
    }

    cluster.stop().await.unwrap();
}
