//! Network partitions (through the nodes' fault plane, `--chaos`) on real processes.
//!
//! Proves that, with the leader cut off alone in a minority:
//! - the majority elects a new leader among itself and commits writes;
//! - no write sent through the minority node is acknowledged, and a linearizable read through
//!   it never returns a stale value (it fails, or returns the majority's latest write);
//! - after healing, the minority node follows the one leader, and every replica converges to
//!   the same value and revision for the key and the same store revision (local reads), and
//!   writes through the former minority succeed again.

use std::time::Duration;

use flotilla_consensus::Read;
use flotilla_tests::{CONVERGE, TestCluster, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minority_cannot_commit_and_replicas_agree_after_heal() {
    let cluster = TestCluster::start("partition", 3, 3, &["--chaos"])
        .await
        .unwrap();
    let minority = cluster.leader_index().await.unwrap();
    let majority: Vec<usize> = (0..3).filter(|i| *i != minority).collect();
    cluster.client(0).put("part/key", "before").await.unwrap();

    cluster.partition(&[minority]).await.unwrap();
    let new_leader = cluster
        .wait_for_leader_among(&majority, CONVERGE)
        .await
        .unwrap();
    assert!(majority.contains(&new_leader));

    // The majority commits.
    let mut latest = String::new();
    for (n, &i) in majority.iter().enumerate() {
        let value = format!("majority-{n}");
        let client = cluster.client_with_timeout(i, Duration::from_secs(5));
        let resp = eventually(CONVERGE, "a write through the majority", || async {
            Ok(client.put("part/key", value.clone()).await?)
        })
        .await
        .unwrap();
        assert!(resp.succeeded);
        latest = value;
    }

    // The minority does not: nothing sent through it is acknowledged (it may fail fast or
    // time out), and its linearizable reads are never stale.
    let isolated = cluster.client_with_timeout(minority, Duration::from_secs(3));
    for attempt in 0..3 {
        let res = isolated
            .put("part/key", format!("minority-{attempt}"))
            .await;
        assert!(
            res.is_err(),
            "a write through the partitioned node was acknowledged: {res:?}"
        );
        let res = isolated
            .put(&format!("part/minority-only-{attempt}"), "x")
            .await;
        assert!(res.is_err(), "acknowledged through the minority: {res:?}");
        if let Ok(got) = isolated.get("part/key", Read::Linearizable).await {
            let value = got
                .kv
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            assert_eq!(
                value.as_deref(),
                Some(latest.as_str()),
                "stale linearizable read through the partitioned node"
            );
        }
    }
    // The majority is still fine while the minority keeps trying.
    let last = cluster
        .client(new_leader)
        .put("part/key", "majority-last")
        .await
        .unwrap();

    cluster.heal().await.unwrap();
    let leader = cluster.wait_for_leader(CONVERGE).await.unwrap();
    eprintln!(
        "minority {}, leader during the partition {}, after healing {leader}",
        cluster.name(minority),
        cluster.name(new_leader)
    );

    // All replicas converge: same value and revision for the key, same store revision.
    eventually(CONVERGE, "replicas to agree after healing", || async {
        let mut views = Vec::new();
        for i in 0..3 {
            let c = cluster.client_with_timeout(i, Duration::from_secs(5));
            let got = c.get("part/key", Read::Local).await?;
            let kv = got
                .kv
                .ok_or_else(|| anyhow::anyhow!("node {i}: key missing"))?;
            let status = c.status().await?;
            views.push((
                String::from_utf8_lossy(&kv.value).into_owned(),
                kv.mod_revision,
                status.revision,
            ));
        }
        anyhow::ensure!(
            views.iter().all(|v| *v == views[0]),
            "replica views differ: {views:?}"
        );
        // They agree on the last acknowledged write or something newer, never on an older
        // state.
        anyhow::ensure!(
            views[0].1 >= last.revision,
            "replicas agree on an older revision {views:?} < {}",
            last.revision
        );
        Ok(())
    })
    .await
    .unwrap();

    // The former minority node accepts writes again.
    let resp = eventually(CONVERGE, "a write through the healed node", || async {
        Ok(cluster
            .client_with_timeout(minority, Duration::from_secs(5))
            .put("part/key", "after-heal")
            .await?)
    })
    .await
    .unwrap();
    for i in 0..3 {
        let got = cluster
            .client(i)
            .get("part/key", Read::Linearizable)
            .await
            .unwrap()
            .kv
            .unwrap();
        assert_eq!(got.value, b"after-heal");
        assert_eq!(got.mod_revision, resp.revision);
    }

    cluster.stop().await.unwrap();
}
