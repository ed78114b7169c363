//! Hostile and malformed input against real `flotilla node` processes.
//!
//! Proves that:
//! - random datagrams to every node's gossip port and QUIC RPC port (including ones shaped
//!   like QUIC long-header packets, and maximum-size ones), and raw TCP garbage, a truncated
//!   HTTP request, an oversized header and idle connections on the API port, crash nothing;
//! - a client whose certificate was issued by another CA cannot read or write, whether it
//!   trusts that other CA or the real cluster CA, and whatever name its certificate carries;
//! - an authenticated client sending undecodable bodies to the `kv` service, or calling an
//!   unknown service, gets a remote error back;
//! - afterwards every node process is still running, all agree on a leader, and normal
//!   writes and linearizable reads work through every node.

use std::time::Duration;

use flotilla_consensus::{Read, StoreClient};
use flotilla_mesh::{Bytes, ClusterCa, Identity, RpcEndpoint, RpcError};
use flotilla_tests::{CONVERGE, TestCluster};
use rand::Rng;
use tokio::io::AsyncWriteExt;

fn random_bytes(len: usize) -> Vec<u8> {
    let mut rng = rand::rng();
    (0..len).map(|_| rng.random()).collect()
}

async fn spray_udp(addr: &str) {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.connect(addr).await.unwrap();
    let mut rng = rand::rng();
    for n in 0..300 {
        let len = match n % 10 {
            0 => 0,
            1 => 65_000,
            2 => 1_200,
            _ => rng.random_range(1..1_500),
        };
        let mut data = random_bytes(len);
        if n % 3 == 0 && len > 8 {
            // A QUIC long header (Initial) with version 1 and a random rest.
            data[0] = 0xc0 | (data[0] & 0x0f);
            data[1..5].copy_from_slice(&1u32.to_be_bytes());
        }
        // Errors (e.g. ICMP "port unreachable" on a later send) do not matter here.
        let _ = sock.send(&data).await;
    }
}

async fn tcp_garbage(addr: &str) {
    // Pure garbage, then close.
    for _ in 0..20 {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            let _ = s.write_all(&random_bytes(4096)).await;
            let _ = s.shutdown().await;
        }
    }
    // A truncated request and a huge header.
    if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
        let _ = s
            .write_all(b"GET /flotilla/status HTTP/1.1\r\nHost: x\r\nContent-Le")
            .await;
    }
    if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
        let mut req = b"POST /flotilla/cluster/remove?node=x HTTP/1.1\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
        let _ = s.write_all(&req).await;
    }
    // Connections left open and idle for a moment.
    let mut idle = Vec::new();
    for _ in 0..50 {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            idle.push(s);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// A store client to node `i` using `identity`, with a short timeout.
async fn client_as(cluster: &TestCluster, identity: &Identity, i: usize) -> StoreClient {
    let rpc = RpcEndpoint::client(identity).await.unwrap();
    StoreClient::new(rpc, cluster.layout.rpc_addr(i).unwrap()).with_timeout(Duration::from_secs(5))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_foreign_certificates_are_refused_without_harm() {
    let mut cluster = TestCluster::start("badinput", 3, 3, &[]).await.unwrap();
    cluster.client(0).put("bad/before", "ok").await.unwrap();

    for i in 0..cluster.len() {
        let node = &cluster.layout.nodes[i];
        spray_udp(&format!("127.0.0.1:{}", node.gossip_port)).await;
        spray_udp(&format!("127.0.0.1:{}", node.rpc_port)).await;
        tcp_garbage(&format!("127.0.0.1:{}", node.api_port)).await;
    }

    // Certificates from another CA.
    let evil_ca = ClusterCa::generate("evil").unwrap();
    let real_ca_pem = std::fs::read_to_string(cluster.data_dir().join("ca.pem")).unwrap();
    let evil = evil_ca.issue("evil").unwrap();
    // Same foreign certificate, but trusting the real CA: only the server's check of the
    // client certificate stands in the way.
    let evil_trusting_real = Identity {
        ca_pem: real_ca_pem.clone(),
        ..evil.clone()
    };
    // A foreign certificate claiming to be a cluster node.
    let impostor = Identity {
        ca_pem: real_ca_pem,
        ..evil_ca.issue("node-1").unwrap()
    };
    for (label, identity) in [
        ("foreign CA", &evil),
        ("foreign cert, real CA trusted", &evil_trusting_real),
        ("impostor node-1", &impostor),
    ] {
        for i in 0..cluster.len() {
            let c = client_as(&cluster, identity, i).await;
            let put = c.put("bad/evil", "pwned").await;
            assert!(
                put.is_err(),
                "{label}: put through node {i} succeeded: {put:?}"
            );
            let get = c.get("bad/before", Read::Local).await;
            assert!(
                get.is_err(),
                "{label}: get through node {i} succeeded: {get:?}"
            );
            let status = c.status().await;
            assert!(status.is_err(), "{label}: status through node {i} answered");
        }
    }

    // Authenticated, but nonsense bodies and an unknown service.
    let addr = cluster.layout.rpc_addr(1).unwrap();
    let bodies: Vec<Bytes> = vec![
        Bytes::new(),
        Bytes::from(random_bytes(1000)),
        Bytes::from_static(&[0x81, 0xa3, b'G', b'e', b't', 0xc0]),
        Bytes::from_static(&[0xdd, 0xff, 0xff, 0xff, 0xff]),
        flotilla_mesh::encode(&serde_json::json!({"Txn": {"req": "not a txn"}})).unwrap(),
    ];
    for body in bodies {
        let res = cluster
            .rpc
            .call_raw(addr, "kv", body.clone(), Duration::from_secs(5))
            .await;
        assert!(
            matches!(res, Err(RpcError::Remote(_))),
            "garbage body {body:?} got {res:?}"
        );
    }
    let res = cluster
        .rpc
        .call_raw(
            addr,
            "no-such-service",
            Bytes::new(),
            Duration::from_secs(5),
        )
        .await;
    assert!(matches!(res, Err(RpcError::Remote(_))), "{res:?}");

    // Nothing crashed, and the cluster works as before.
    let exited = cluster.reap_exited();
    assert!(exited.is_empty(), "nodes exited: {exited:?}");
    for i in 0..cluster.len() {
        assert!(cluster.is_running(i));
    }
    cluster.wait_for_leader(CONVERGE).await.unwrap();
    for i in 0..cluster.len() {
        let key = format!("bad/after-{i}");
        let resp = cluster.client(i).put(&key, "fine").await.unwrap();
        for j in 0..cluster.len() {
            let got = cluster
                .client(j)
                .get(&key, Read::Linearizable)
                .await
                .unwrap();
            assert_eq!(got.kv.map(|kv| kv.mod_revision), Some(resp.revision));
        }
    }
    let got = cluster
        .client(2)
        .get("bad/evil", Read::Linearizable)
        .await
        .unwrap();
    assert!(got.kv.is_none(), "a foreign client's write got in");
    let exited = cluster.reap_exited();
    assert!(exited.is_empty(), "nodes exited: {exited:?}");

    cluster.stop().await.unwrap();
}
