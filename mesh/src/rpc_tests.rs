use std::sync::atomic::{AtomicUsize, Ordering};

use futures::FutureExt;

use super::*;
use crate::faults::FaultRules;
use crate::tls::ClusterCa;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Ping {
    n: u64,
    text: String,
}

fn service(
    f: impl Fn(CallContext, Bytes) -> BoxFuture<'static, Result<Reply, RemoteError>>
    + Send
    + Sync
    + 'static,
) -> Arc<dyn Service> {
    Arc::new(f)
}

struct Fixture {
    server: RpcEndpoint,
    client: RpcEndpoint,
    server_addr: SocketAddr,
    calls: Arc<AtomicUsize>,
    ca: ClusterCa,
}

async fn fixture(client_limits: RpcLimits) -> Fixture {
    let ca = ClusterCa::generate("test").unwrap();
    let server = RpcEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &ca.issue("node-a").unwrap(),
        FaultPlane::default(),
        RpcLimits::default(),
    )
    .await
    .unwrap();
    let client = RpcEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &ca.issue("node-b").unwrap(),
        FaultPlane::default(),
        client_limits,
    )
    .await
    .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    server.register(
        "echo",
        service(move |ctx, body| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut p: Ping = decode(&body)?;
                p.text = format!("{} from {}", p.text, ctx.peer_name);
                Ok(Reply::Unary(encode(&p)?))
            }
            .boxed()
        }),
    );
    server.register(
        "count",
        service(|_, body| {
            async move {
                let n: u64 = decode(&body)?;
                let items = futures::stream::iter((0..n).map(|i| encode(&i)));
                Ok(Reply::Stream(items.boxed()))
            }
            .boxed()
        }),
    );
    server.register(
        "fail",
        service(|_, _| async { Err(RemoteError::new("nope")) }.boxed()),
    );
    server.register(
        "slow",
        service(|_, _| {
            async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok(Reply::Unary(encode(&0u64)?))
            }
            .boxed()
        }),
    );
    server.register(
        "big",
        service(|_, _| async { Ok(Reply::Unary(encode(&vec![7u8; 8192])?)) }.boxed()),
    );
    let server_addr = server.local_addr();
    Fixture {
        server,
        client,
        server_addr,
        calls,
        ca,
    }
}

const T: Duration = Duration::from_secs(5);

async fn echo(f: &Fixture) -> Result<Ping, RpcError> {
    f.client
        .call(
            f.server_addr,
            "echo",
            &Ping {
                n: 1,
                text: "hi".into(),
            },
            T,
        )
        .await
}

#[tokio::test]
async fn unary_stream_and_concurrency() {
    let f = fixture(RpcLimits::default()).await;
    let p = echo(&f).await.unwrap();
    assert_eq!(p.text, "hi from node-b");

    let items: Vec<u64> = f
        .client
        .call_stream::<_, u64>(f.server_addr, "count", &5u64, T)
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(items, vec![0, 1, 2, 3, 4]);

    // A unary reply through call_stream is a one-item stream.
    let one: Vec<Ping> = f
        .client
        .call_stream::<_, Ping>(
            f.server_addr,
            "echo",
            &Ping {
                n: 2,
                text: "s".into(),
            },
            T,
        )
        .await
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
        .await;
    assert_eq!(one.len(), 1);

    let calls = (0..100u64).map(|n| {
        let client = f.client.clone();
        let addr = f.server_addr;
        async move {
            let p: Ping = client
                .call(
                    addr,
                    "echo",
                    &Ping {
                        n,
                        text: n.to_string(),
                    },
                    T,
                )
                .await
                .unwrap();
            assert_eq!(p.n, n);
        }
    });
    futures::future::join_all(calls).await;
    f.client.close().await;
    f.server.close().await;
}

#[tokio::test]
async fn error_kinds_are_distinguished() {
    let f = fixture(RpcLimits::default()).await;
    match f.client.call::<_, u64>(f.server_addr, "fail", &(), T).await {
        Err(RpcError::Remote(e)) => assert_eq!(e.message, "nope"),
        other => panic!("expected Remote, got {other:?}"),
    }
    match f
        .client
        .call::<_, u64>(f.server_addr, "nosuch", &(), T)
        .await
    {
        Err(RpcError::Remote(e)) => assert!(e.message.contains("unknown service")),
        other => panic!("expected Remote, got {other:?}"),
    }
    match f
        .client
        .call::<_, u64>(f.server_addr, "slow", &(), Duration::from_millis(300))
        .await
    {
        Err(RpcError::Timeout(_)) => {}
        other => panic!("expected Timeout, got {other:?}"),
    }
    // Nothing listens there: the handshake never completes, so the request was never sent.
    let unbound = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    match f
        .client
        .call::<_, u64>(unbound, "echo", &(), Duration::from_millis(500))
        .await
    {
        Err(RpcError::Unreachable(_)) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
    match f
        .client
        .call_stream::<_, u64>(f.server_addr, "fail", &(), T)
        .await
    {
        Err(RpcError::Remote(_)) => {}
        other => panic!("expected Remote, got {:?}", other.map(|_| ())),
    }
    // Oversized request is refused locally and deterministically.
    let small = fixture(RpcLimits {
        max_frame_bytes: 1024,
        ..RpcLimits::default()
    })
    .await;
    match small
        .client
        .call::<_, u64>(small.server_addr, "echo", &vec![1u8; 4096], T)
        .await
    {
        Err(RpcError::Remote(e)) => assert!(e.message.contains("exceeds")),
        other => panic!("expected Remote, got {other:?}"),
    }
    // A reply larger than the caller accepts is a Network error, detected before allocation.
    match small
        .client
        .call::<_, Vec<u8>>(small.server_addr, "big", &(), T)
        .await
    {
        Err(RpcError::Network(e)) => assert!(e.contains("exceeds"), "{e}"),
        other => panic!("expected Network, got {other:?}"),
    }
    echo(&small).await.unwrap();
    echo(&f).await.unwrap();
}

#[tokio::test]
async fn foreign_ca_is_refused_and_server_keeps_serving() {
    let f = fixture(RpcLimits::default()).await;
    let other = ClusterCa::generate("other").unwrap();
    let intruder = RpcEndpoint::client(&other.issue("node-x").unwrap())
        .await
        .unwrap();
    match intruder
        .call::<_, Ping>(
            f.server_addr,
            "echo",
            &Ping {
                n: 0,
                text: String::new(),
            },
            T,
        )
        .await
    {
        Err(RpcError::Unreachable(_)) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
    // A server with a foreign certificate is refused by our client too.
    let rogue = RpcEndpoint::bind(
        "127.0.0.1:0".parse().unwrap(),
        &other.issue("node-y").unwrap(),
        FaultPlane::default(),
        RpcLimits::default(),
    )
    .await
    .unwrap();
    match f
        .client
        .call::<_, u64>(rogue.local_addr(), "echo", &(), T)
        .await
    {
        Err(RpcError::Unreachable(_)) => {}
        other => panic!("expected Unreachable, got {other:?}"),
    }
    echo(&f).await.unwrap();
    // A CLI-style client endpoint with a proper cert works.
    let cli = RpcEndpoint::client(&f.ca.issue("admin").unwrap())
        .await
        .unwrap();
    let p: Ping = cli
        .call(
            f.server_addr,
            "echo",
            &Ping {
                n: 0,
                text: "x".into(),
            },
            T,
        )
        .await
        .unwrap();
    assert_eq!(p.text, "x from admin");
}

async fn raw_exchange(f: &Fixture, bytes: &[u8]) -> Option<Response> {
    let conn = f.client.connection(f.server_addr).await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    match timeout(T, read_response(&mut recv, 1 << 20)).await {
        Ok(Ok(r)) => Some(r),
        Ok(Err(_)) => None,
        Err(_) => panic!("server did not close a malformed stream"),
    }
}

#[tokio::test]
async fn malformed_input_does_not_hurt_server() {
    let f = fixture(RpcLimits::default()).await;
    // Length prefix claiming 4 GiB: rejected before allocating.
    match raw_exchange(&f, &[0xff, 0xff, 0xff, 0xff, 1, 2, 3]).await {
        Some(Response::Err(e)) => assert!(e.message.contains("exceeds"), "{}", e.message),
        other => panic!("expected an error frame, got {other:?}"),
    }
    // Random garbage in place of a request.
    let garbage: Vec<u8> = (0..512).map(|_| rand::random::<u8>()).collect();
    let _ = raw_exchange(&f, &garbage).await;
    // Well-framed header that is not msgpack.
    let mut bad = 5u32.to_be_bytes().to_vec();
    bad.extend_from_slice(b"\xc1\xc1\xc1\xc1\xc1");
    assert!(matches!(
        raw_exchange(&f, &bad).await,
        Some(Response::Err(_))
    ));
    // Truncated body.
    let mut header = rmp_serde::to_vec_named(&RequestHeader {
        service: "echo".into(),
    })
    .unwrap();
    let mut trunc = (header.len() as u32).to_be_bytes().to_vec();
    trunc.append(&mut header);
    trunc.extend_from_slice(&100u32.to_be_bytes());
    trunc.extend_from_slice(b"short");
    assert!(matches!(
        raw_exchange(&f, &trunc).await,
        Some(Response::Err(_))
    ));
    // Garbage datagrams straight at the UDP port.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for len in [1usize, 20, 1200, 1500] {
        let junk: Vec<u8> = (0..len).map(|_| rand::random::<u8>()).collect();
        udp.send_to(&junk, f.server_addr).await.unwrap();
    }
    assert_eq!(echo(&f).await.unwrap().n, 1);
    // A fresh connection is also still accepted.
    let other = RpcEndpoint::client(&f.ca.issue("node-c").unwrap())
        .await
        .unwrap();
    let _: Ping = other
        .call(
            f.server_addr,
            "echo",
            &Ping {
                n: 3,
                text: String::new(),
            },
            T,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn fault_plane_applies_to_rpc() {
    let f = fixture(RpcLimits::default()).await;
    let client_faults = f.client.faults().clone();
    let server_faults = f.server.faults().clone();
    client_faults.learn_peer("node-a", &[f.server_addr]);
    server_faults.learn_peer("node-b", &[f.client.local_addr()]);

    // Outgoing to a partitioned peer: fails fast, never sent.
    client_faults.set(FaultRules {
        partition: Some(vec!["node-b".into()]),
        ..Default::default()
    });
    assert!(matches!(echo(&f).await, Err(RpcError::Unreachable(_))));
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
    client_faults.clear();
    echo(&f).await.unwrap();

    // Incoming from a dropped peer: no answer, so the caller times out.
    server_faults.set(FaultRules {
        partition: Some(vec!["node-a".into()]),
        ..Default::default()
    });
    let r = f
        .client
        .call::<_, Ping>(
            f.server_addr,
            "echo",
            &Ping {
                n: 0,
                text: String::new(),
            },
            Duration::from_millis(400),
        )
        .await;
    assert!(matches!(r, Err(RpcError::Timeout(_))), "{r:?}");
    // Streams to a blocked peer are refused the same way.
    let r = f
        .client
        .call_stream::<_, u64>(f.server_addr, "count", &3u64, Duration::from_millis(400))
        .await;
    assert!(matches!(r, Err(RpcError::Timeout(_))));
    server_faults.clear();
    echo(&f).await.unwrap();

    // Duplicate: the handler runs twice, the caller sees one answer.
    let before = f.calls.load(Ordering::SeqCst);
    client_faults.set(FaultRules {
        duplicate: vec!["node-a".into()],
        ..Default::default()
    });
    echo(&f).await.unwrap();
    let deadline = Instant::now() + T;
    while f.calls.load(Ordering::SeqCst) < before + 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(f.calls.load(Ordering::SeqCst), before + 2);

    // Delay: the call takes at least the configured delay.
    client_faults.set(FaultRules {
        delay_ms: [("node-a".to_string(), 300)].into(),
        ..Default::default()
    });
    let start = Instant::now();
    echo(&f).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300));
    client_faults.clear();
}

#[tokio::test]
async fn stream_consumer_drop_releases_server_side() {
    let f = fixture(RpcLimits::default()).await;
    let released = Arc::new(AtomicUsize::new(0));
    struct Guard(Arc<AtomicUsize>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let r = released.clone();
    f.server.register(
        "forever",
        service(move |_, _| {
            let guard = Guard(r.clone());
            async move {
                // One item, then pending forever (like an idle watch).
                let items = futures::stream::once(async { encode(&1u64) })
                    .chain(futures::stream::pending())
                    .map(move |x| {
                        let _ = &guard;
                        x
                    });
                Ok(Reply::Stream(items.boxed()))
            }
            .boxed()
        }),
    );
    let mut s = f
        .client
        .call_stream::<_, u64>(f.server_addr, "forever", &(), T)
        .await
        .unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), 1);
    drop(s);
    let deadline = Instant::now() + T;
    while released.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(released.load(Ordering::SeqCst), 1);

    // Server going away mid-stream ends the stream with a Network error.
    let mut s = f
        .client
        .call_stream::<_, u64>(f.server_addr, "forever", &(), T)
        .await
        .unwrap();
    assert_eq!(s.next().await.unwrap().unwrap(), 1);
    f.server.close().await;
    match timeout(T, s.next()).await.unwrap() {
        Some(Err(RpcError::Network(_))) => {}
        other => panic!("expected Network, got {other:?}"),
    }
    assert!(timeout(T, s.next()).await.unwrap().is_none());
}

#[test]
fn decode_rejects_trailing_bytes() {
    let ok = encode(&5u32).unwrap();
    assert_eq!(decode::<u32>(&ok).unwrap(), 5);
    let mut junk = ok.to_vec();
    junk.extend_from_slice(b"junk");
    assert!(decode::<u32>(&junk).is_err());
}

/// Echoes each input frame back as a stream item, then "end" once the caller finishes.
struct Upper;

impl Service for Upper {
    fn call(&self, _: CallContext, _: Bytes) -> BoxFuture<'static, Result<Reply, RemoteError>> {
        async { Err(RemoteError::new("duplex only")) }.boxed()
    }

    fn call_duplex(
        &self,
        _: CallContext,
        body: Bytes,
        input: BoxStream<'static, Bytes>,
    ) -> BoxFuture<'static, Result<Reply, RemoteError>> {
        async move {
            let prefix: String = decode(&body)?;
            let items = input
                .map(move |b| encode(&format!("{prefix}{}", String::from_utf8_lossy(&b))))
                .chain(futures::stream::once(async { encode(&"end".to_string()) }));
            Ok(Reply::Stream(items.boxed()))
        }
        .boxed()
    }
}

#[tokio::test]
async fn duplex_call_streams_both_ways_in_order() {
    let f = fixture(RpcLimits::default()).await;
    f.server.register("upper", Arc::new(Upper));
    let (tx, rx) = futures::channel::mpsc::unbounded::<Bytes>();
    let mut replies = f
        .client
        .call_duplex::<_, String>(f.server_addr, "upper", &"> ".to_string(), rx.boxed(), T)
        .await
        .unwrap();
    // Interactive: each input is answered before the next is sent.
    for word in ["a", "bc", "def"] {
        tx.unbounded_send(Bytes::from(word)).unwrap();
        assert_eq!(replies.next().await.unwrap().unwrap(), format!("> {word}"));
    }
    drop(tx);
    assert_eq!(replies.next().await.unwrap().unwrap(), "end");
    assert!(replies.next().await.is_none());
    // A plain service called through call_duplex ignores the input and still answers.
    let reply = f
        .client
        .call_duplex::<_, Ping>(
            f.server_addr,
            "echo",
            &Ping {
                n: 1,
                text: "hi".into(),
            },
            futures::stream::iter([Bytes::from("ignored")]).boxed(),
            T,
        )
        .await
        .unwrap()
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.text, "hi from node-b");
}
