//! Leader failures on real `flotilla node` processes: SIGKILL, SIGSTOP, and killing everyone.
//!
//! Proves that:
//! - under steady write load through every node, SIGKILLing the leader leads to a new leader,
//!   writes keep being acknowledged afterwards, every acknowledged write is then readable with
//!   its value (writes with an unknown outcome are allowed, never counted), no two acknowledged
//!   writes share a revision, and the killed node, restarted, catches up (local reads return
//!   every acknowledged value; its applied index reaches the leader's);
//! - a leader frozen with SIGSTOP for longer than the election timeout is replaced; resumed
//!   with SIGCONT, the cluster ends with one leader agreed by all; compare-and-swap writers
//!   running through every node (the frozen one included) meanwhile never get two
//!   acknowledged CAS writes on the same expected revision, and the key's replicated history
//!   (replayed by a watch) is one chain in which every acknowledged CAS appears exactly as
//!   acknowledged and nothing appears that nobody wrote;
//! - after SIGKILLing every node and restarting them all, every acknowledged write (puts,
//!   overwrites, deletes) is there, on every node, and the revision did not go backwards.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use flotilla_consensus::{EventKind, Read, StoreError, TxnRequest};
use flotilla_tests::{CONVERGE, TestCluster, eventually};
use futures::StreamExt;
use nix::sys::signal::Signal;
use tokio::sync::Mutex;

/// An acknowledged unconditional put.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    value: String,
    revision: u64,
    after_kill: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_leader_under_write_load_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start("killleader", 3, 3, &[]).await.unwrap();
    let old_leader = cluster.leader_index().await.unwrap();
    let old_leader_name = cluster.name(old_leader).to_owned();

    let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
    // Per writer, the highest sequence number acknowledged for its `last/w{w}` pointer.
    let pointers: Arc<Mutex<BTreeMap<usize, usize>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let unknown = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..3)
        .map(|i| cluster.client_with_timeout(i, Duration::from_secs(5)))
        .collect();
    let mut writers = Vec::new();
    for w in 0..4usize {
        let (acks, pointers, killed, stop, unknown, clients) = (
            acks.clone(),
            pointers.clone(),
            killed.clone(),
            stop.clone(),
            unknown.clone(),
            clients.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut seq = 0usize;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                let node = (w + seq) % clients.len();
                let key = format!("load/w{w}/{seq:06}");
                let value = format!("w{w}-s{seq}-n{node}");
                // Read before sending: an ack counts as "after the kill" only if the whole
                // request was issued after it.
                let after_kill = killed.load(Ordering::SeqCst);
                match clients[node].put(&key, value.clone()).await {
                    Ok(resp) => {
                        assert!(resp.succeeded, "unconditional put not applied");
                        acks.lock().await.push(Ack {
                            key,
                            value,
                            revision: resp.revision,
                            after_kill,
                        });
                        // Also move the writer's "last" pointer, checked at the end.
                        if clients[node]
                            .put(&format!("last/w{w}"), seq.to_string())
                            .await
                            .is_ok()
                        {
                            pointers.lock().await.insert(w, seq);
                        }
                    }
                    Err(StoreError::Unknown(_)) => {
                        unknown.fetch_add(1, Ordering::SeqCst);
                    }
                    // Not applied (unreachable node, no leader yet): just go on.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }));
    }

    let count_acks = |after: bool| {
        let acks = acks.clone();
        async move {
            acks.lock()
                .await
                .iter()
                .filter(|a| !after || a.after_kill)
                .count()
        }
    };
    eventually(
        CONVERGE,
        "20 acknowledged writes before the kill",
        || async {
            let n = count_acks(false).await;
            anyhow::ensure!(n >= 20, "{n} acks");
            Ok(())
        },
    )
    .await
    .unwrap();

    cluster.kill(old_leader).await.unwrap();
    killed.store(true, Ordering::SeqCst);

    // The survivors may still name the dead leader for a moment; wait for one of their own.
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old_leader).collect();
    let new_leader = cluster
        .wait_for_leader_among(&survivors, CONVERGE)
        .await
        .unwrap();
    assert_ne!(cluster.name(new_leader), old_leader_name);
    eventually(
        CONVERGE,
        "20 acknowledged writes after the kill",
        || async {
            let n = count_acks(true).await;
            anyhow::ensure!(n >= 20, "{n} acks after the kill");
            Ok(())
        },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let acks = acks.lock().await.clone();
    eprintln!(
        "{} acknowledged writes ({} after the kill), {} with unknown outcome",
        acks.len(),
        acks.iter().filter(|a| a.after_kill).count(),
        unknown.load(Ordering::SeqCst)
    );

    // No two acknowledged writes at the same revision.
    let revisions: BTreeSet<u64> = acks.iter().map(|a| a.revision).collect();
    assert_eq!(
        revisions.len(),
        acks.len(),
        "two acked writes share a revision"
    );

    // Every acknowledged write is readable, through each surviving node.
    let check = |kvs: Vec<flotilla_consensus::KeyValue>| -> anyhow::Result<()> {
        let map: BTreeMap<String, (String, u64)> = kvs
            .into_iter()
            .map(|kv| {
                let v = String::from_utf8_lossy(&kv.value).into_owned();
                (kv.key, (v, kv.mod_revision))
            })
            .collect();
        for a in &acks {
            match map.get(&a.key) {
                Some((v, rev)) if *v == a.value && *rev == a.revision => {}
                other => anyhow::bail!("acked {a:?} reads back as {other:?}"),
            }
        }
        Ok(())
    };
    for &i in &survivors {
        let range = cluster
            .client(i)
            .range("load/", usize::MAX, Read::Linearizable)
            .await
            .unwrap();
        check(range.kvs).unwrap_or_else(|e| panic!("through node {i}: {e:#}"));
    }
    // Each writer's "last" pointer is at least the last value acknowledged for it (a later
    // put with an unknown outcome may have moved it further, never back).
    let last = cluster
        .client(survivors[0])
        .range("last/", usize::MAX, Read::Linearizable)
        .await
        .unwrap();
    for (w, acked_seq) in pointers.lock().await.iter() {
        let pointer = last
            .kvs
            .iter()
            .find(|kv| kv.key == format!("last/w{w}"))
            .map(|kv| String::from_utf8_lossy(&kv.value).parse::<usize>().unwrap());
        assert!(
            pointer.is_some_and(|p| p >= *acked_seq),
            "writer {w}: pointer {pointer:?} behind its acknowledged {acked_seq}"
        );
    }

    // The killed node comes back and catches up.
    cluster.start_node(old_leader).unwrap();
    let target = cluster
        .client(survivors[0])
        .leader_status()
        .await
        .unwrap()
        .applied_index
        .unwrap();
    let restarted = cluster.client_with_timeout(old_leader, Duration::from_secs(5));
    eventually(CONVERGE, "the restarted node to catch up", || async {
        let status = restarted.status().await?;
        let applied = status.applied_index.unwrap_or(0);
        anyhow::ensure!(applied >= target, "applied {applied} < {target}");
        let range = restarted.range("load/", usize::MAX, Read::Local).await?;
        check(range.kvs)
    })
    .await
    .unwrap();
    cluster.wait_for_leader(CONVERGE).await.unwrap();

    cluster.stop().await.unwrap();
}

/// One CAS attempt's outcome.
#[derive(Debug, Clone)]
struct Cas {
    writer: usize,
    node: usize,
    expected: u64,
    value: String,
    /// Some(revision) if acknowledged as applied.
    acked: Option<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigstop_leader_is_replaced_and_cas_writers_never_conflict() {
    let cluster = TestCluster::start("sigstop", 3, 3, &[]).await.unwrap();
    let old_leader = cluster.leader_index().await.unwrap();
    let old_leader_name = cluster.name(old_leader).to_owned();
    const KEY: &str = "cas/counter";
    let first = cluster.client(0).put(KEY, "init").await.unwrap();

    let attempts: Arc<Mutex<Vec<Cas>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    // Two writers per node, so the frozen leader's clients and the others' race.
    for w in 0..6usize {
        let node = w % 3;
        let client = cluster.client_with_timeout(node, Duration::from_secs(4));
        let (attempts, stop) = (attempts.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let expected = match client.get(KEY, Read::Linearizable).await {
                    Ok(r) => r.kv.map(|kv| kv.mod_revision).unwrap_or(0),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let value = format!("w{w}-n{n}");
                let res = client
                    .txn(TxnRequest::compare_and_put(KEY, expected, value.clone()))
                    .await;
                let acked = match &res {
                    Ok(r) if r.succeeded => Some(r.revision),
                    _ => None,
                };
                // Every attempt is recorded, failed ones too: any of them may have reached the
                // log, and knowing them all lets the history check below demand that every
                // value in the history was written by someone, over the revision it expected.
                attempts.lock().await.push(Cas {
                    writer: w,
                    node,
                    expected,
                    value,
                    acked,
                });
            }
        }));
    }
    let acked_count = |exclude_node: Option<usize>| {
        let attempts = attempts.clone();
        async move {
            attempts
                .lock()
                .await
                .iter()
                .filter(|c| c.acked.is_some() && Some(c.node) != exclude_node)
                .count()
        }
    };
    eventually(CONVERGE, "some CAS writes before the pause", || async {
        let n = acked_count(None).await;
        anyhow::ensure!(n >= 5, "{n} acked");
        Ok(())
    })
    .await
    .unwrap();

    cluster.signal(old_leader, Signal::SIGSTOP).unwrap();
    // Longer than the election timeout (500-1000 ms), so the others must elect.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != old_leader).collect();
    let paused_new_leader = cluster
        .wait_for_leader_among(&others, CONVERGE)
        .await
        .unwrap();
    assert_ne!(paused_new_leader, old_leader);
    let before = acked_count(Some(old_leader)).await;
    eventually(
        CONVERGE,
        "CAS writes while the old leader is frozen",
        || async {
            let n = acked_count(Some(old_leader)).await;
            anyhow::ensure!(n >= before + 5, "{n} acked, {before} before the pause");
            Ok(())
        },
    )
    .await
    .unwrap();

    cluster.signal(old_leader, Signal::SIGCONT).unwrap();
    let final_leader = cluster.wait_for_leader(CONVERGE).await.unwrap();
    eventually(CONVERGE, "exactly one node in state Leader", || async {
        let mut in_leader_state = Vec::new();
        for i in 0..3 {
            let s = cluster.status(i, false).await?;
            if s.raft.state == "Leader" {
                in_leader_state.push(s.name);
            }
        }
        anyhow::ensure!(
            in_leader_state == vec![final_leader.clone()],
            "in state Leader: {in_leader_state:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    // Let the writers (the resumed node's too) go on for a little while, then stop them.
    let before = acked_count(None).await;
    eventually(CONVERGE, "CAS writes after the resume", || async {
        let n = acked_count(None).await;
        anyhow::ensure!(n >= before + 3, "{n} acked, {before} at the resume");
        Ok(())
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.unwrap();
    }
    let attempts = attempts.lock().await.clone();
    let acked: Vec<&Cas> = attempts.iter().filter(|c| c.acked.is_some()).collect();
    eprintln!(
        "{} CAS attempts recorded, {} acknowledged; old leader {old_leader_name}, leader while \
         frozen {}, final leader {final_leader}",
        attempts.len(),
        acked.len(),
        cluster.name(paused_new_leader)
    );

    // 1. No two acknowledged CAS writes expected the same revision (both would have
    //    overwritten the same version: a lost update).
    let mut by_expected: BTreeMap<u64, &Cas> = BTreeMap::new();
    for c in &acked {
        if let Some(other) = by_expected.insert(c.expected, c) {
            panic!("conflicting acknowledged CAS writes: {other:?} and {c:?}");
        }
    }

    // 2. The key's history, replayed by a watch, is a single chain: each put replaced the
    //    previous one, each value was written by an attempt that expected exactly the
    //    revision it replaced, and every acknowledged CAS is in it at its revision.
    let final_kv = cluster
        .client(0)
        .get(KEY, Read::Linearizable)
        .await
        .unwrap()
        .kv
        .unwrap();
    let mut stream = cluster.client(0).watch(KEY, first.revision).await.unwrap();
    let mut history = Vec::new();
    while history
        .last()
        .map(|e: &flotilla_consensus::Event| e.revision())
        != Some(final_kv.mod_revision)
    {
        let batch = tokio::time::timeout(CONVERGE, stream.next())
            .await
            .expect("history replay timed out")
            .expect("watch ended")
            .expect("watch failed");
        history.extend(batch.into_iter().filter(|e| e.kv.key == KEY));
    }
    assert_eq!(history[0].revision(), first.revision);
    assert_eq!(String::from_utf8_lossy(&history[0].kv.value), "init");
    let by_value: BTreeMap<&str, &Cas> = attempts.iter().map(|c| (c.value.as_str(), c)).collect();
    for pair in history.windows(2) {
        let (prev, e) = (&pair[0], &pair[1]);
        assert_eq!(e.kind, EventKind::Put, "{e:?}");
        assert_eq!(
            e.prev.as_ref().map(|p| p.mod_revision),
            Some(prev.revision()),
            "history is not a chain at {e:?}"
        );
        let value = String::from_utf8_lossy(&e.kv.value).into_owned();
        let attempt = by_value
            .get(value.as_str())
            .unwrap_or_else(|| panic!("value {value:?} in the history was never written"));
        assert_eq!(
            attempt.expected,
            prev.revision(),
            "{attempt:?} applied over revision {}",
            prev.revision()
        );
        if let Some(rev) = attempt.acked {
            assert_eq!(rev, e.revision(), "{attempt:?} acked at another revision");
        }
    }
    let in_history: BTreeMap<String, u64> = history
        .iter()
        .map(|e| {
            (
                String::from_utf8_lossy(&e.kv.value).into_owned(),
                e.revision(),
            )
        })
        .collect();
    for c in &acked {
        assert_eq!(
            in_history.get(&c.value),
            c.acked.as_ref(),
            "acknowledged {c:?} missing from the history"
        );
    }
    assert_eq!(history.last().unwrap().kv.value, final_kv.value);
    let mut per_writer = BTreeMap::new();
    for c in &acked {
        *per_writer.entry(c.writer).or_insert(0) += 1;
    }
    eprintln!("acknowledged CAS writes per writer: {per_writer:?}");

    cluster.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_every_node_and_restart_keeps_all_acknowledged_data() {
    let mut cluster = TestCluster::start("killall", 3, 3, &[]).await.unwrap();
    let mut expected: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut last_revision = 0;
    for k in 0..60usize {
        let node = k % 3;
        let key = format!("durable/k{k:03}");
        let value = format!("value-{k}");
        let resp = cluster.client(node).put(&key, value.clone()).await.unwrap();
        last_revision = resp.revision;
        expected.insert(key, Some(value));
    }
    // Overwrites and deletes.
    for k in (0..60usize).step_by(7) {
        let key = format!("durable/k{k:03}");
        let value = format!("overwritten-{k}");
        let resp = cluster
            .client(k % 3)
            .put(&key, value.clone())
            .await
            .unwrap();
        last_revision = resp.revision;
        expected.insert(key, Some(value));
    }
    for k in (3..60usize).step_by(11) {
        let key = format!("durable/k{k:03}");
        let resp = cluster
            .client(k % 3)
            .txn(TxnRequest {
                success: vec![flotilla_consensus::Op::delete(key.clone())],
                ..Default::default()
            })
            .await
            .unwrap();
        last_revision = resp.revision;
        expected.insert(key, None);
    }

    for i in 0..cluster.len() {
        cluster.kill(i).await.unwrap();
    }
    cluster.start_all().unwrap();
    cluster.wait_for_leader(CONVERGE).await.unwrap();

    let want: BTreeMap<String, String> = expected
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect();
    for i in 0..cluster.len() {
        let client = cluster.client(i);
        let got = eventually(
            CONVERGE,
            "a linearizable read after the restart",
            || async {
                Ok(client
                    .range("durable/", usize::MAX, Read::Linearizable)
                    .await?)
            },
        )
        .await
        .unwrap();
        assert!(
            got.revision >= last_revision,
            "revision went back: {} < {last_revision}",
            got.revision
        );
        let got: BTreeMap<String, String> = got
            .kvs
            .into_iter()
            .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
            .collect();
        assert_eq!(
            got, want,
            "data through node {i} after restarting every node"
        );
        // The local replica has it too (it may need a moment to apply).
        eventually(CONVERGE, "the local replica to catch up", || async {
            let local = client.range("durable/", usize::MAX, Read::Local).await?;
            let local: BTreeMap<String, String> = local
                .kvs
                .into_iter()
                .map(|kv| (kv.key, String::from_utf8_lossy(&kv.value).into_owned()))
                .collect();
            anyhow::ensure!(local == want, "node {i} local view differs");
            Ok(())
        })
        .await
        .unwrap();
    }
    // New writes continue above the old revisions.
    let resp = cluster.client(1).put("durable/new", "after").await.unwrap();
    assert!(resp.revision > last_revision);

    cluster.stop().await.unwrap();
}
