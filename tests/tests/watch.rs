//! Watches over RPC, on real `flotilla node` processes.
//!
//! Proves that:
//! - a watch opened (through a follower) from the revision of an old write replays every later
//!   put under the prefix, in revision order, with the values and revisions the writers were
//!   acknowledged, and then delivers live changes: a delete arrives as `EventKind::Delete`
//!   at the delete's revision;
//! - after `compact(rev)`, every node refuses a watch from a revision at or below the
//!   compacted one with `StoreError::Expired` (as the call's error or the stream's first
//!   item), while a watch from just above it still replays the rest of the history.

use std::time::Duration;

use flotilla_consensus::{Event, EventKind, StoreClient, StoreError};
use flotilla_tests::{CONVERGE, TestCluster, eventually};
use futures::StreamExt;
use futures::stream::BoxStream;

type WatchStream = BoxStream<'static, Result<Vec<Event>, StoreError>>;

/// Reads events until `n` have arrived (or fails after `timeout`).
async fn next_events(stream: &mut WatchStream, n: usize, timeout: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Err(_) => panic!(
                "only {} of {n} events after {timeout:?}: {out:#?}",
                out.len()
            ),
            Ok(None) => panic!("watch ended after {} of {n} events", out.len()),
            Ok(Some(Err(e))) => panic!("watch failed after {} events: {e}", out.len()),
            Ok(Some(Ok(batch))) => {
                assert!(!batch.is_empty(), "empty event batch");
                out.extend(batch);
            }
        }
    }
    out
}

/// Opens a watch from `from` and returns the error it reports (`Ok(())` if it delivered
/// events or nothing within a short time instead).
async fn watch_error(client: &StoreClient, from: u64) -> Result<(), StoreError> {
    let mut stream = client.watch("w/", from).await?;
    match tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
        Ok(Some(Err(e))) => Err(e),
        _ => Ok(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_replays_history_in_order_and_compaction_expires_old_revisions() {
    let cluster = TestCluster::start("watch", 3, 3, &[]).await.unwrap();
    let leader = cluster.leader_index().await.unwrap();
    let follower = (leader + 1) % 3;
    let writer = cluster.client(leader);

    // Something outside the prefix, which the watch must not report.
    writer.put("other/x", "ignored").await.unwrap();
    const N: usize = 20;
    let mut written = Vec::new();
    for k in 0..N {
        let key = format!("w/k{k:02}");
        let value = format!("v{k}");
        let resp = writer.put(&key, value.clone()).await.unwrap();
        assert!(resp.succeeded);
        written.push((key, value, resp.revision));
        if k % 5 == 0 {
            writer.put("other/x", format!("noise-{k}")).await.unwrap();
        }
    }
    let first_rev = written[0].2;
    let revs: Vec<u64> = written.iter().map(|w| w.2).collect();
    assert!(
        revs.windows(2).all(|w| w[0] < w[1]),
        "revisions of sequential writes must increase: {revs:?}"
    );

    // Replay from the first write's revision, through a follower (which may trail: the events
    // arrive once it applies them).
    let watcher = cluster.client(follower);
    let mut stream = watcher.watch("w/", first_rev).await.unwrap();
    let events = next_events(&mut stream, N, CONVERGE).await;
    assert_eq!(events.len(), N, "unexpected extra events: {events:#?}");
    for (e, (key, value, rev)) in events.iter().zip(&written) {
        assert_eq!(e.kind, EventKind::Put);
        assert_eq!(&e.kv.key, key);
        assert_eq!(String::from_utf8_lossy(&e.kv.value), *value);
        assert_eq!(e.revision(), *rev);
        assert_eq!(e.kv.create_revision, *rev);
        assert_eq!(e.kv.version, 1);
        assert!(
            e.prev.is_none(),
            "first write of {key} has no previous value"
        );
    }

    // Live: an overwrite then a delete.
    let over = writer.put("w/k03", "v3-again").await.unwrap();
    let del = writer
        .txn(flotilla_consensus::TxnRequest {
            success: vec![flotilla_consensus::Op::delete("w/k03")],
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(del.succeeded);
    let live = next_events(&mut stream, 2, CONVERGE).await;
    assert_eq!(live.len(), 2, "{live:#?}");
    assert_eq!(live[0].kind, EventKind::Put);
    assert_eq!(live[0].revision(), over.revision);
    assert_eq!(live[0].kv.version, 2);
    assert_eq!(
        live[0].prev.as_ref().map(|p| p.mod_revision),
        Some(written[3].2),
        "overwrite event carries the replaced value"
    );
    assert_eq!(live[1].kind, EventKind::Delete, "{:#?}", live[1]);
    assert_eq!(live[1].kv.key, "w/k03");
    assert_eq!(live[1].revision(), del.revision);
    assert!(live[1].revision() > live[0].revision());
    drop(stream);

    // Compact at the 10th write. Compaction is replicated: every node refuses watches from at
    // or below it once it has applied the entry.
    let compact_at = written[9].2;
    let compacted = cluster.client(follower).compact(compact_at).await.unwrap();
    assert_eq!(compacted, compact_at);
    for i in 0..cluster.len() {
        let client = cluster.client(i);
        for from in [first_rev, compact_at] {
            let err = eventually(CONVERGE, "an Expired watch", || {
                let client = client.clone();
                async move {
                    match watch_error(&client, from).await {
                        Err(StoreError::Expired { requested, oldest }) => Ok((requested, oldest)),
                        other => anyhow::bail!("watch from {from} on node {i}: {other:?}"),
                    }
                }
            })
            .await
            .unwrap();
            assert_eq!(err.0, from);
            assert!(
                err.1 > compact_at,
                "oldest available {} after compaction",
                err.1
            );
        }
    }

    // Just above the compaction point, history is still there: writes 11..N, then the
    // overwrite and the delete.
    let mut stream = cluster
        .client(follower)
        .watch("w/", compact_at + 1)
        .await
        .unwrap();
    let rest = next_events(&mut stream, N - 10 + 2, CONVERGE).await;
    let got: Vec<u64> = rest.iter().map(|e| e.revision()).collect();
    let mut want: Vec<u64> = written[10..].iter().map(|w| w.2).collect();
    want.extend([over.revision, del.revision]);
    assert_eq!(got, want);

    cluster.stop().await.unwrap();
}
