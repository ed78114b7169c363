//! The store's etcd-like semantics on a real single-node Raft group (real redb files, real QUIC
//! endpoint): revisions, transactions, watches with replay and `Expired`, restart durability.

use std::time::Duration;

use flotilla_consensus::{
    CmpOp, Compare, EventKind, Op, OpResult, Read, Store, StoreConfig, StoreError, TxnRequest,
};
use flotilla_mesh::{ClusterCa, FaultPlane, RpcEndpoint, RpcLimits};
use futures::StreamExt;

async fn start(dir: &std::path::Path, ca: &ClusterCa) -> (Store, RpcEndpoint) {
    let identity = ca.issue("solo").unwrap();
    let rpc = RpcEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &identity,
        FaultPlane::new(),
        RpcLimits::default(),
    )
    .await
    .unwrap();
    let mut config = StoreConfig::new("solo", dir.to_owned(), rpc.local_addr());
    config.bootstrap = true;
    // After a restart in the same process the previous instance's tasks may still be letting go
    // of the database files; give them a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let store = loop {
        match Store::start(config.clone(), rpc.clone()).await {
            Ok(store) => break store,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("store not ready to reopen yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    };
    while !store.is_leader() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "single node never became leader"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (store, rpc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_transactions_and_watches_behave_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("test").unwrap();
    let (store, rpc) = start(dir.path(), &ca).await;

    // Create: create_revision = mod_revision, version 1; a second put bumps both revision and version.
    let r1 = store
        .txn(TxnRequest::put("/a/x", b"1".to_vec()))
        .await
        .unwrap();
    assert!(r1.succeeded);
    let r2 = store
        .txn(TxnRequest::put("/a/x", b"2".to_vec()))
        .await
        .unwrap();
    assert_eq!(r2.revision, r1.revision + 1);
    let got = store.get("/a/x", Read::Linearizable).await.unwrap();
    let kv = got.kv.unwrap();
    assert_eq!(kv.value, b"2");
    assert_eq!(kv.create_revision, r1.revision);
    assert_eq!(kv.mod_revision, r2.revision);
    assert_eq!(kv.version, 2);

    // CAS on a stale revision fails and changes nothing; on the current one it succeeds.
    let stale = store
        .txn(TxnRequest::compare_and_put(
            "/a/x",
            r1.revision,
            b"stale".to_vec(),
        ))
        .await
        .unwrap();
    assert!(!stale.succeeded);
    assert_eq!(
        stale.revision, r2.revision,
        "a failed compare must not bump the revision"
    );
    let fresh = store
        .txn(TxnRequest::compare_and_put(
            "/a/x",
            r2.revision,
            b"3".to_vec(),
        ))
        .await
        .unwrap();
    assert!(fresh.succeeded);

    // Multi-key transaction: all writes share one revision; the failure branch runs on mismatch.
    let multi = store
        .txn(TxnRequest {
            compare: vec![Compare::Missing { key: "/a/y".into() }],
            success: vec![
                Op::put("/a/y", b"y".to_vec()),
                Op::put("/a/z", b"z".to_vec()),
            ],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(multi.succeeded);
    let range = store.range("/a/", 100, Read::Linearizable).await.unwrap();
    let keys: Vec<&str> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/a/x", "/a/y", "/a/z"]);
    assert!(
        range.kvs[1..]
            .iter()
            .all(|kv| kv.mod_revision == multi.revision)
    );
    let else_branch = store
        .txn(TxnRequest {
            compare: vec![Compare::Version {
                key: "/a/y".into(),
                op: CmpOp::Greater,
                version: 5,
            }],
            success: vec![Op::delete("/a/y")],
            failure: vec![Op::Get { key: "/a/y".into() }],
        })
        .await
        .unwrap();
    assert!(!else_branch.succeeded);
    assert!(matches!(&else_branch.results[0], OpResult::Get { kv: Some(kv) } if kv.value == b"y"));

    // Watch from an old revision replays everything since, in order, then live events.
    let mut watch = store.watch("/a/", r1.revision).unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend(batch);
    }
    let revs: Vec<u64> = seen.iter().map(|e| e.revision()).collect();
    assert!(
        revs.windows(2).all(|w| w[0] <= w[1]),
        "events out of order: {revs:?}"
    );
    assert_eq!(seen[0].kv.value, b"1");
    let del = store
        .txn(TxnRequest {
            success: vec![Op::DeletePrefix {
                prefix: "/a/y".into(),
            }],
            ..Default::default()
        })
        .await
        .unwrap();
    let batch = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(batch[0].kind, EventKind::Delete);
    assert_eq!(batch[0].kv.key, "/a/y");
    assert_eq!(batch[0].revision(), del.revision);

    // After compaction, a watch from at or below the compacted revision is Expired.
    store.compact(r2.revision).await.unwrap();
    match store.watch("/a/", r1.revision) {
        Err(StoreError::Expired { .. }) => {}
        Err(e) => panic!("expected Expired, got {e}"),
        Ok(_) => panic!("expected Expired, got a stream"),
    }
    assert!(store.watch("/a/", r2.revision + 1).is_ok());

    // Restart on the same files: data and revision survive.
    let revision = store.local_revision();
    drop(watch);
    store.shutdown().await;
    rpc.close().await;
    drop(store);
    let (store, rpc) = start(dir.path(), &ca).await;
    let got = store.get("/a/x", Read::Linearizable).await.unwrap();
    assert_eq!(got.kv.unwrap().value, b"3");
    assert!(got.revision >= revision);
    store.shutdown().await;
    rpc.close().await;
}
