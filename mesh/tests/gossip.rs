//! Gossip membership over real UDP on 127.0.0.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_mesh::{
    BoxFuture, Bytes, CallContext, ClusterCa, FaultPlane, FaultRules, Gossip, GossipConfig,
    MemberEvent, MemberInfo, RemoteError, Reply, RpcEndpoint, RpcError, RpcLimits, Service, encode,
};
use futures::FutureExt;
use tokio::sync::broadcast;

fn free_udp_port() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap()
}

fn member(name: &str, generation: u64, rpc_addr: SocketAddr) -> MemberInfo {
    MemberInfo {
        name: name.to_string(),
        generation_id: generation,
        gossip_addr: "127.0.0.1:1".parse().unwrap(),
        rpc_addr,
        api_addr: "127.0.0.1:8080".parse().unwrap(),
        roles: vec!["worker".into()],
        ready: false,
        capacity: BTreeMap::from([("cpu".to_string(), "4".to_string())]),
        version: "test".into(),
        alive: true,
    }
}

async fn start(
    name: &str,
    addr: SocketAddr,
    seeds: &[SocketAddr],
    generation: u64,
    faults: FaultPlane,
    rpc_addr: SocketAddr,
) -> Gossip {
    let mut cfg = GossipConfig::lan_defaults(name, "test-cluster", addr);
    cfg.seeds = seeds.iter().map(|s| s.to_string()).collect();
    Gossip::start(cfg, member(name, generation, rpc_addr), faults)
        .await
        .unwrap()
}

async fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn live_names(g: &Gossip) -> Vec<String> {
    let mut v: Vec<String> = g.live_members().into_iter().map(|m| m.name).collect();
    v.sort();
    v
}

/// Waits for the first event about `name` and returns it.
async fn next_event_for(
    rx: &mut broadcast::Receiver<MemberEvent>,
    name: &str,
    limit: Duration,
) -> MemberEvent {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no event for {name}"))
            .unwrap();
        let info = match &ev {
            MemberEvent::Joined(i)
            | MemberEvent::Updated(i)
            | MemberEvent::Dead(i)
            | MemberEvent::Left(i) => i,
        };
        if info.name == name {
            return ev;
        }
    }
}

/// Skips `Updated` events (e.g. readiness) while waiting for a membership change.
async fn next_change_for(
    rx: &mut broadcast::Receiver<MemberEvent>,
    name: &str,
    limit: Duration,
) -> MemberEvent {
    loop {
        match next_event_for(rx, name, limit).await {
            MemberEvent::Updated(_) => continue,
            ev => return ev,
        }
    }
}

const CONVERGE: Duration = Duration::from_secs(10);
const ALL3: [&str; 3] = ["a", "b", "c"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_crash_restart_leave() {
    let (pa, pb, pc) = (free_udp_port(), free_udp_port(), free_udp_port());
    let rpc = "127.0.0.1:9".parse().unwrap();
    let a = start("a", pa, &[], 1, FaultPlane::default(), rpc).await;
    let b = start("b", pb, &[pa], 1, FaultPlane::default(), rpc).await;
    let c = start("c", pc, &[pa], 1, FaultPlane::default(), rpc).await;
    for g in [&a, &b, &c] {
        wait_until("3 live members", CONVERGE, || live_names(g) == ALL3).await;
    }
    let ma = a.members().into_iter().find(|m| m.name == "c").unwrap();
    assert_eq!(ma.gossip_addr, pc);
    assert_eq!(ma.capacity.get("cpu").map(String::as_str), Some("4"));
    assert_eq!(ma.roles, vec!["worker".to_string()]);

    // Updates propagate.
    let mut rx_a = a.subscribe();
    c.set_ready(true).await;
    match next_event_for(&mut rx_a, "c", CONVERGE).await {
        MemberEvent::Updated(m) => assert!(m.ready),
        other => panic!("expected Updated, got {other:?}"),
    }
    // Advisory keys propagate too.
    c.set_key("pod_cidr", "10.0.3.0/24").await;
    let t0 = Instant::now();
    while a.node_keys("c").await.get("pod_cidr").map(String::as_str) != Some("10.0.3.0/24") {
        assert!(t0.elapsed() < CONVERGE, "pod_cidr did not propagate");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Crash: drop without leave.
    let crashed_at = Instant::now();
    drop(c);
    match next_change_for(&mut rx_a, "c", CONVERGE).await {
        MemberEvent::Dead(m) => assert!(!m.alive),
        other => panic!("expected Dead, got {other:?}"),
    }
    eprintln!("crash detected after {:?}", crashed_at.elapsed());
    assert_eq!(live_names(&a), ["a", "b"]);
    assert!(a.members().iter().any(|m| m.name == "c" && !m.alive));

    // Restart with a new generation on the same port: Joined again.
    let c2 = start("c", pc, &[pa], 2, FaultPlane::default(), rpc).await;
    match next_change_for(&mut rx_a, "c", CONVERGE).await {
        MemberEvent::Joined(m) => assert_eq!(m.generation_id, 2),
        other => panic!("expected Joined, got {other:?}"),
    }
    wait_until("restart converged", CONVERGE, || live_names(&b) == ALL3).await;
    // Keys come from the new generation only.
    assert!(!a.node_keys("c").await.contains_key("pod_cidr"));

    // Graceful leave: Left, and never Dead afterwards.
    b.leave().await;
    match next_change_for(&mut rx_a, "b", CONVERGE).await {
        MemberEvent::Left(m) => assert!(!m.alive),
        other => panic!("expected Left, got {other:?}"),
    }
    assert_eq!(live_names(&a), ["a", "c"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(ev) = rx_a.try_recv() {
        if let MemberEvent::Dead(m) = &ev {
            assert_ne!(m.name, "b", "left node reported dead");
        }
    }
    drop(c2);
}

struct Echo;
impl Service for Echo {
    fn call(
        &self,
        ctx: CallContext,
        _body: Bytes,
    ) -> BoxFuture<'static, Result<Reply, RemoteError>> {
        async move { Ok(Reply::Unary(encode(&ctx.peer_name)?)) }.boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_blocks_gossip_and_rpc_then_heals() {
    let ca = ClusterCa::generate("p").unwrap();
    let mut nodes = Vec::new();
    let mut seed = None;
    for name in ALL3 {
        let faults = FaultPlane::default();
        let rpc = RpcEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            &ca.issue(name).unwrap(),
            faults.clone(),
            RpcLimits::default(),
        )
        .await
        .unwrap();
        rpc.register("echo", Arc::new(Echo));
        let addr = free_udp_port();
        let seeds: Vec<SocketAddr> = seed.into_iter().collect();
        let g = start(name, addr, &seeds, 1, faults.clone(), rpc.local_addr()).await;
        seed.get_or_insert(addr);
        nodes.push((g, rpc, faults));
    }
    for (g, _, _) in &nodes {
        wait_until("3 live members", CONVERGE, || live_names(g) == ALL3).await;
    }
    let (a, rpc_a, faults_a) = &nodes[0];
    let (_, _, faults_b) = &nodes[1];
    let (c, rpc_c, faults_c) = &nodes[2];
    let call = |from: &RpcEndpoint, to: &RpcEndpoint| {
        let (from, to) = (from.clone(), to.local_addr());
        async move {
            from.call::<_, String>(to, "echo", &(), Duration::from_secs(2))
                .await
        }
    };
    assert_eq!(call(rpc_a, rpc_c).await.unwrap(), "a");

    let ab = Some(vec!["a".to_string(), "b".to_string()]);
    faults_a.set(FaultRules {
        partition: ab.clone(),
        ..Default::default()
    });
    faults_b.set(FaultRules {
        partition: ab,
        ..Default::default()
    });
    faults_c.set(FaultRules {
        partition: Some(vec!["c".to_string()]),
        ..Default::default()
    });
    wait_until("a loses c", CONVERGE, || live_names(a) == ["a", "b"]).await;
    wait_until("c alone", CONVERGE, || live_names(c) == ["c"]).await;
    assert!(matches!(
        call(rpc_a, rpc_c).await,
        Err(RpcError::Unreachable(_))
    ));
    assert!(matches!(
        call(rpc_c, rpc_a).await,
        Err(RpcError::Unreachable(_))
    ));

    for (_, _, f) in &nodes {
        f.clear();
    }
    for (g, _, _) in &nodes {
        wait_until("healed", Duration::from_secs(20), || live_names(g) == ALL3).await;
    }
    assert_eq!(call(rpc_c, rpc_a).await.unwrap(), "c");
}

/// No false deaths while idle. `cargo test -p flotilla-mesh --test gossip -- --ignored`;
/// duration from FLOTILLA_SOAK_SECS (default 600).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn idle_soak_no_false_deaths() {
    let secs: u64 = std::env::var("FLOTILLA_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let rpc = "127.0.0.1:9".parse().unwrap();
    let names = ["n0", "n1", "n2", "n3", "n4"];
    let seed = free_udp_port();
    let mut nodes = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let addr = if i == 0 { seed } else { free_udp_port() };
        let seeds = if i == 0 { vec![] } else { vec![seed] };
        nodes.push(start(name, addr, &seeds, 1, FaultPlane::default(), rpc).await);
    }
    for g in &nodes {
        wait_until("5 live", CONVERGE, || g.live_members().len() == 5).await;
    }
    let mut rxs: Vec<_> = nodes.iter().map(|g| g.subscribe()).collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    for (g, rx) in nodes.iter().zip(rxs.iter_mut()) {
        assert_eq!(g.live_members().len(), 5);
        while let Ok(ev) = rx.try_recv() {
            assert!(
                !matches!(ev, MemberEvent::Dead(_) | MemberEvent::Left(_)),
                "{} saw {ev:?}",
                g.node_name()
            );
        }
    }
}
