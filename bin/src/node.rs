//! `flotilla node`: wires one node together: RPC endpoint, Raft store, gossip, voter
//! automation and the HTTP port.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use flotilla_chaos::status::{FAULTS_PATH, NodeStatus, REMOVE_PATH, STATUS_PATH};
use flotilla_consensus::{ROLE_RAFT, ROLE_VOTER, Store, StoreConfig, StoreError, VoterPolicy};
use flotilla_mesh::{
    FaultPlane, FaultRules, Gossip, GossipConfig, Identity, MemberEvent, MemberInfo, RpcEndpoint,
    RpcLimits,
};
use serde::Deserialize;
use tokio::sync::watch;

use crate::LogFormat;

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// Node name, unique in the cluster (also its Raft identity).
    #[arg(long)]
    name: String,
    /// Where this node keeps its Raft log, state and certificates.
    #[arg(long)]
    data_dir: PathBuf,
    /// Gossip addresses (host:port) of nodes already in the cluster, comma separated.
    #[arg(long, value_delimiter = ',')]
    join: Vec<String>,
    /// Initialise a new cluster with this node as its first voter, if the data dir has none.
    #[arg(long)]
    bootstrap: bool,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind_addr: IpAddr,
    /// Address other nodes use to reach this one (default: the bind address).
    #[arg(long)]
    advertise_addr: Option<IpAddr>,
    /// HTTP port: health, status and (later) the Kubernetes API.
    #[arg(long, default_value_t = 6443)]
    api_port: u16,
    /// UDP port of the QUIC RPC endpoint.
    #[arg(long, default_value_t = 7001)]
    rpc_port: u16,
    /// UDP port of gossip.
    #[arg(long, default_value_t = 7946)]
    gossip_port: u16,
    /// Target number of Raft voters (1, 3, 5 or 7); the leader keeps the voter set at this size.
    #[arg(long, default_value_t = 3)]
    voters: usize,
    /// Never promote this node to voter (it still replicates as a learner).
    #[arg(long)]
    no_voter: bool,
    /// A voter that gossip reports dead for this long is replaced by a healthy node.
    #[arg(long, default_value_t = 15.0)]
    dead_voter_grace_secs: f64,
    /// Cluster CA certificate (default: DATA_DIR/tls/ca.pem).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
    /// This node's certificate (default: DATA_DIR/tls/node.pem).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// This node's private key (default: DATA_DIR/tls/node.key).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Enable the fault-injection admin API (drop, delay, duplicate, partition).
    #[arg(long)]
    chaos: bool,
    /// The container runtime of this node's kubelet: `process` (real processes; isolated in
    /// namespaces and cgroups with the image's root filesystem when root on Linux), `sim` (no
    /// processes: containers run after a short delay, for scale trials) or `none` (no kubelet).
    #[arg(long, default_value = "process", value_parser = ["process", "sim", "none"])]
    runtime: String,
    /// Run `process` containers as plain host processes even when isolation is possible.
    #[arg(long)]
    no_isolation: bool,
    /// The cluster's pod network (e.g. 10.244.0.0/16): the node is given a free subnet of it
    /// (recorded as its Node's spec.podCIDR), and its isolated pods get IPs from that subnet
    /// on a node bridge. Without it (or --pod-cidr), isolated pods have their own network
    /// namespace with loopback only.
    #[arg(long)]
    cluster_cidr: Option<String>,
    /// The prefix length of each node's subnet of --cluster-cidr.
    #[arg(long, default_value_t = 24)]
    node_cidr_prefix: u8,
    /// This node's pod CIDR, instead of one allocated from --cluster-cidr.
    #[arg(long)]
    pod_cidr: Option<String>,
    /// The node bridge pods are attached to (default: named after the pod CIDR).
    #[arg(long)]
    pod_bridge: Option<String>,
    /// Scale trials: this node also serves N hollow nodes (`NAME-hollow-I`, Node objects whose
    /// pods its `sim` runtime runs; their liveness is this node's). Needs `--runtime sim`.
    #[arg(long, default_value_t = 0)]
    hollow_nodes: usize,
    /// How many shards the controllers' and the scheduler's work is split into (the same on
    /// every node); each is owned by one live node at a time.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    controller_shards: u32,
    /// Seconds a pod without its own toleration of the `node.kubernetes.io/unreachable` taint
    /// stays bound to an unreachable node before it is evicted (Kubernetes: 300, added to
    /// every pod by admission). Flotilla keeps it short so a dead node's pods run elsewhere
    /// within seconds; raise it where nodes restart slowly or the network flaps.
    #[arg(long, default_value_t = 2)]
    default_unreachable_toleration_seconds: u64,
    /// Events not seen again for this long are deleted (the apiserver's `--event-ttl`).
    #[arg(long, default_value_t = 3600)]
    event_ttl_seconds: u64,
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Gossip interval.
    #[arg(long, default_value_t = 200)]
    gossip_interval_ms: u64,
    /// Failure-detector threshold: a node is dead after about this many gossip intervals of
    /// silence.
    #[arg(long, default_value_t = 8.0)]
    phi_threshold: f64,
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = 60)]
    heartbeat_ms: u64,
    /// Raft election timeout range. A follower also refuses to vote for
    /// `election_timeout_max` after its last heartbeat (leader lease), so failover takes
    /// between one and two election timeouts.
    #[arg(long, default_value_t = 300)]
    election_timeout_min_ms: u64,
    #[arg(long, default_value_t = 600)]
    election_timeout_max_ms: u64,
    /// Build a snapshot and purge the log every this many entries (etcd's default too: a
    /// snapshot copies the whole key space, so taking one often costs more than it saves).
    #[arg(long, default_value_t = 100_000)]
    snapshot_every: u64,
    /// Log entries kept behind the latest snapshot, so a briefly lagging follower catches up
    /// from the log rather than needing a whole snapshot.
    #[arg(long, default_value_t = 5_000)]
    log_keep_behind_snapshot: u64,
    /// Page cache of the on-disk state machine, in MiB (the Raft log gets a quarter of it).
    #[arg(long, default_value_t = 64)]
    cache_mib: usize,
    /// Memory for watch history (events a watch may resume from), in MiB.
    #[arg(long, default_value_t = 64)]
    watch_history_mib: usize,
    /// Cluster id: nodes gossip only with nodes of the same id.
    #[arg(long, default_value = "flotilla")]
    cluster_id: String,
}

struct AppState {
    store: Store,
    gossip: Gossip,
    rpc: RpcEndpoint,
    faults: FaultPlane,
    chaos: bool,
    me: MemberInfo,
}

fn tls_path(flag: &Option<PathBuf>, data_dir: &Path, file: &str) -> PathBuf {
    flag.clone()
        .unwrap_or_else(|| data_dir.join("tls").join(file))
}

/// Total memory in bytes, from /proc/meminfo (advisory capacity for gossip).
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

pub async fn run(args: NodeArgs) -> anyhow::Result<()> {
    if ![1, 3, 5, 7].contains(&args.voters) {
        bail!("--voters must be 1, 3, 5 or 7 (got {})", args.voters);
    }
    if args.election_timeout_min_ms <= args.heartbeat_ms
        || args.election_timeout_max_ms <= args.election_timeout_min_ms
    {
        bail!("need heartbeat < election timeout min < election timeout max");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    // Absolute from here on: container shims resolve paths in other mount namespaces.
    let mut args = args;
    args.data_dir = std::fs::canonicalize(&args.data_dir)
        .with_context(|| format!("resolving {}", args.data_dir.display()))?;
    let pid_file = args.data_dir.join("node.pid");
    std::fs::write(&pid_file, format!("{}\n", std::process::id())).context("writing node.pid")?;

    let identity = Identity::load(
        &tls_path(&args.ca_cert, &args.data_dir, "ca.pem"),
        &tls_path(&args.cert, &args.data_dir, "node.pem"),
        &tls_path(&args.key, &args.data_dir, "node.key"),
    )
    .context("loading the node certificate (create one with `flotilla ca issue`)")?;
    let cn = identity.common_name()?;
    if cn != args.name {
        bail!(
            "the certificate is for {cn:?}, but this node is named {:?}",
            args.name
        );
    }

    let advertise = args.advertise_addr.unwrap_or(args.bind_addr);
    let rpc_addr = SocketAddr::new(advertise, args.rpc_port);
    let api_addr = SocketAddr::new(advertise, args.api_port);
    let gossip_addr = SocketAddr::new(advertise, args.gossip_port);

    let faults = FaultPlane::new();
    let limits = RpcLimits {
        // Raft snapshots travel as one frame.
        max_frame_bytes: 64 * 1024 * 1024,
        ..RpcLimits::default()
    };
    // Raft, the QUIC transport and gossip get a runtime (one worker thread) of their own.
    // Under load the main runtime's run queue holds thousands of ready tasks (API requests,
    // kubelets, controllers, the scheduler); a heartbeat or vote queued behind them cost the
    // leader its lease and the failure detector its accuracy. Leaked: it lives as long as the
    // process, and a runtime must not be dropped from async code.
    let consensus = Box::leak(Box::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("flotilla-consensus")
            .enable_all()
            .build()
            .context("starting the consensus runtime")?,
    ))
    .handle()
    .clone();
    let rpc = {
        let (identity, faults) = (identity.clone(), faults.clone());
        let addr = SocketAddr::new(args.bind_addr, args.rpc_port);
        consensus
            .spawn(async move { RpcEndpoint::bind(addr, &identity, faults, limits).await })
            .await?
            .context("binding the RPC port")?
    };

    let mut store_config = StoreConfig::new(&args.name, args.data_dir.join("raft"), rpc_addr);
    store_config.bootstrap = args.bootstrap;
    store_config.heartbeat = Duration::from_millis(args.heartbeat_ms);
    store_config.election_timeout_min = Duration::from_millis(args.election_timeout_min_ms);
    store_config.election_timeout_max = Duration::from_millis(args.election_timeout_max_ms);
    store_config.snapshot_every = args.snapshot_every;
    store_config.keep_behind_snapshot = args.log_keep_behind_snapshot;
    store_config.cache_bytes = args.cache_mib << 20;
    store_config.watch_history.max_bytes = args.watch_history_mib << 20;
    let store = consensus
        .spawn(Store::start(store_config, rpc.clone()))
        .await?
        .context("starting the store")?;

    let generation_id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    if args.hollow_nodes > 0 && args.runtime != "sim" {
        anyhow::bail!("--hollow-nodes needs --runtime sim");
    }
    let mut roles = vec![ROLE_RAFT.to_owned()];
    if !args.no_voter {
        roles.push(ROLE_VOTER.to_owned());
    }
    if args.hollow_nodes > 0 {
        roles.push(format!("{HOLLOW_ROLE}{}", args.hollow_nodes));
    }
    let mut capacity = BTreeMap::new();
    capacity.insert(
        "cpu".to_owned(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .to_string(),
    );
    if let Some(mem) = total_memory() {
        capacity.insert("memory".to_owned(), mem.to_string());
    }
    let me = MemberInfo {
        name: args.name.clone(),
        generation_id,
        gossip_addr,
        rpc_addr,
        api_addr,
        roles,
        ready: false,
        capacity,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        alive: true,
    };
    let mut gossip_config = GossipConfig::lan_defaults(
        &args.name,
        &args.cluster_id,
        SocketAddr::new(args.bind_addr, args.gossip_port),
    );
    gossip_config.advertise_addr = gossip_addr;
    gossip_config.seeds = args.join.clone();
    gossip_config.gossip_interval = Duration::from_millis(args.gossip_interval_ms);
    gossip_config.phi_threshold = args.phi_threshold;
    let gossip = consensus
        .spawn(Gossip::start(gossip_config, me.clone(), faults.clone()))
        .await?
        .context("starting gossip")?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let automation = flotilla_consensus::spawn_voter_automation(
        store.clone(),
        gossip.clone(),
        VoterPolicy {
            target: args.voters,
            dead_grace: Duration::from_secs_f64(args.dead_voter_grace_secs),
            ..VoterPolicy::default()
        },
        shutdown_rx.clone(),
    );
    let readiness = tokio::spawn(publish_readiness(
        store.clone(),
        gossip.clone(),
        shutdown_rx.clone(),
    ));
    let connections = tokio::spawn(drop_stale_connections(
        gossip.clone(),
        rpc.clone(),
        shutdown_rx.clone(),
    ));

    let mut registration = flotilla_api::NodeRegistration::from_host(
        &args.name,
        &advertise.to_string(),
        env!("CARGO_PKG_VERSION"),
    );
    registration.pod_cidr = match (&args.pod_cidr, &args.cluster_cidr) {
        (Some(fixed), _) => flotilla_api::PodCidr::Fixed(fixed.clone()),
        (None, Some(cluster)) => flotilla_api::PodCidr::Allocate {
            cluster: cluster.clone(),
            prefix: args.node_cidr_prefix,
        },
        (None, None) => flotilla_api::PodCidr::None,
    };
    registration
        .pod_cidr
        .check()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let registered = tokio::spawn(create_default_objects(
        store.clone(),
        registration,
        args.hollow_nodes,
        shutdown_rx.clone(),
    ));
    // One parsed watch of the registry, shared by this node's kubelet, scheduler and
    // controllers.
    let feed = flotilla_actors::controllers::feed::Feed::start(
        store.clone(),
        "/registry/",
        shutdown_rx.clone(),
    );
    let mut process_runtime = None;
    let runtime: Option<Arc<dyn flotilla_actors::runtime::Runtime>> = match args.runtime.as_str() {
        "sim" => Some(Arc::new(flotilla_actors::runtime::sim::SimRuntime::new(
            Default::default(),
        ))),
        "process" => {
            use flotilla_actors::runtime::process::{ProcessConfig, ProcessRuntime};
            let images = flotilla_actors::image::ImageStore::open(
                &args.data_dir.join(flotilla_actors::image::NODE_IMAGES_DIR),
            )
            .context("opening the image store")?;
            let runtime = ProcessRuntime::new(ProcessConfig {
                root_dir: args.data_dir.join("runtime"),
                isolate: !args.no_isolation,
                // One cgroup subtree per node, so nodes sharing a machine stay apart.
                cgroup_parent: format!("flotilla-{}", args.name),
                bridge: args.pod_bridge.clone(),
                ..ProcessConfig::default()
            })
            .context("starting the process runtime")?
            .with_images(Arc::new(images));
            tracing::info!(isolated = runtime.isolated(), "process runtime ready");
            let runtime = Arc::new(runtime);
            process_runtime = Some(runtime.clone());
            Some(runtime)
        }
        _ => None,
    };
    if let Some(runtime) = runtime {
        // Other nodes' APIs reach this kubelet (logs, exec) over mesh RPC.
        rpc.register(
            flotilla_actors::kubelet::logs::SERVICE,
            Arc::new(flotilla_actors::kubelet::logs::KubeletService::new(
                runtime.clone(),
            )),
        );
        let config = flotilla_actors::kubelet::KubeletConfig {
            node_name: args.name.clone(),
            hosted: Arc::new(hollow_names(&args.name, args.hollow_nodes).collect()),
            host_ip: advertise.to_string(),
            pods_dir: args.data_dir.join("pods"),
            volumes_dir: args.data_dir.join("volumes"),
            runtime,
            store: store.clone(),
            feed: feed.clone(),
        };
        let mut shutdown = shutdown_rx.clone();
        // Pods start once the node is registered and so knows its pod CIDR.
        tokio::spawn(async move {
            let Ok(Some(pod_cidr)) = registered.await else {
                return;
            };
            if let (Some(cidr), Some(rt)) = (pod_cidr, &process_runtime) {
                match rt.set_pod_cidr(&cidr) {
                    Ok(()) => {
                        tracing::info!(pod_cidr = %cidr, bridge = ?rt.pod_network().map(|n| &n.bridge), "pod network")
                    }
                    Err(e) => tracing::error!(error = %e, "pod network unusable; pods get no IP"),
                }
            }
            let _kubelet = flotilla_actors::kubelet::Kubelet::start(config, shutdown.clone());
            let _ = shutdown.wait_for(|stop| *stop).await;
        });
    }
    // Controller and scheduler shards, owned by live, ready nodes as gossip sees them.
    let live: flotilla_actors::controllers::shards::Members = {
        let gossip = gossip.clone();
        Arc::new(move || {
            let mut names = Vec::new();
            for m in gossip.live_members().into_iter().filter(|m| m.ready) {
                // A live node's hollow nodes are live with it.
                let hollow = m
                    .roles
                    .iter()
                    .find_map(|r| r.strip_prefix(HOLLOW_ROLE)?.parse().ok())
                    .unwrap_or(0);
                names.extend(hollow_names(&m.name, hollow));
                names.push(m.name);
            }
            names
        })
    };
    let members: flotilla_actors::controllers::shards::Members = {
        let gossip = gossip.clone();
        Arc::new(move || {
            gossip
                .live_members()
                .into_iter()
                .filter(|m| m.ready)
                .map(|m| m.name)
                .collect()
        })
    };
    let (dead, gone, membership_changed) = track_verdicts(gossip.clone(), shutdown_rx.clone());
    flotilla_actors::controllers::start(
        &args.name,
        store.clone(),
        feed,
        flotilla_actors::controllers::ControllerConfig {
            shard_count: args.controller_shards,
            default_unreachable_toleration: Duration::from_secs(
                args.default_unreachable_toleration_seconds,
            ),
            dead,
            gone: Some(gone),
            membership_changed: Some(membership_changed),
            event_ttl: Duration::from_secs(args.event_ttl_seconds.max(1)),
        },
        members,
        live,
        shutdown_rx.clone(),
    );

    let state = Arc::new(AppState {
        store: store.clone(),
        gossip: gossip.clone(),
        rpc: rpc.clone(),
        faults,
        chaos: args.chaos,
        me,
    });
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(args.bind_addr, args.api_port))
        .await
        .context("binding the API port")?;
    let listener = crate::https::DualListener::new(
        listener,
        identity
            .https_server_config()
            .context("building the HTTPS config")?,
    )
    .context("serving the API port")?;
    tracing::info!(
        node = %args.name, api = %api_addr, rpc = %rpc_addr, gossip = %gossip_addr,
        bootstrap = args.bootstrap, chaos = args.chaos, "node started"
    );
    let mut http_shutdown = shutdown_rx.clone();
    let http = tokio::spawn(async move {
        let served = axum::serve(listener, router(state))
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http server failed");
        }
    });

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    // Announce departure first so peers report `Left`, not `Dead`.
    gossip.leave().await;
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    let _ = automation.await;
    let _ = readiness.await;
    let _ = connections.await;
    store.shutdown().await;
    rpc.close().await;
    let _ = std::fs::remove_file(&pid_file);
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the node can still be stopped with Ctrl-C.
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A peer that gossip reports restarted (new generation), dead or gone leaves a pooled QUIC
/// connection behind that would only fail after the idle timeout; close it now.
async fn drop_stale_connections(
    gossip: Gossip,
    rpc: RpcEndpoint,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut events = gossip.subscribe();
    loop {
        let event = tokio::select! {
            e = events.recv() => e,
            _ = shutdown.changed() => return,
        };
        match event {
            Ok(MemberEvent::Joined(m) | MemberEvent::Dead(m) | MemberEvent::Left(m)) => {
                if m.name != gossip.node_name() {
                    rpc.disconnect(m.rpc_addr);
                }
            }
            Ok(MemberEvent::Updated(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Every node makes sure the standard namespaces exist once a leader is known; the create is
/// conditional, so the first one wins and the rest change nothing.
/// The standard namespaces, and this node's Node object, once a leader is known.
/// Writes the default namespaces and this node's Node object, retrying until there is a
/// leader; the node's pod CIDR, or `None` if shut down first.
async fn create_default_objects(
    store: Store,
    node: flotilla_api::NodeRegistration,
    hollow: usize,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Option<String>> {
    loop {
        if store.leader_name().is_some() {
            let done = async {
                flotilla_api::ensure_default_namespaces(&store).await?;
                // Hollow nodes: a roomy machine each, registered a batch at a time.
                let names: Vec<String> = hollow_names(&node.name, hollow).collect();
                for batch in names.chunks(64) {
                    let regs = batch.iter().map(|name| {
                        let mut reg = node.clone();
                        reg.name = name.clone();
                        reg.pod_cidr = flotilla_api::PodCidr::None;
                        reg.cpus = 32;
                        reg.memory_kib = 128 << 20;
                        reg.max_pods = 110;
                        reg.labels
                            .push(("flotilla.io/hollow".into(), "true".into()));
                        reg
                    });
                    let regs: Vec<_> = regs.collect();
                    for r in futures::future::join_all(
                        regs.iter().map(|r| flotilla_api::register_node(&store, r)),
                    )
                    .await
                    {
                        r?;
                    }
                }
                flotilla_api::register_node(&store, &node).await
            };
            match done.await {
                Ok(cidr) => return Some(cidr),
                Err(e) => tracing::debug!(error = ?e, "default objects not written yet"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

/// What gossip concluded about members that are not live.
#[derive(Default)]
struct Verdicts {
    /// Declared dead by the failure detector: name → it and the hollow nodes it serves.
    dead: BTreeMap<String, Vec<String>>,
    /// Announced their departure.
    left: std::collections::BTreeSet<String>,
}

/// The nodes (with the hollow nodes they serve) gossip's failure detector declared dead, the
/// node daemons declared dead or departed, and a counter bumped on every membership event:
/// the controllers act on a verdict the moment gossip reaches it.
fn track_verdicts(
    gossip: Gossip,
    mut shutdown: watch::Receiver<bool>,
) -> (
    flotilla_actors::controllers::shards::Members,
    flotilla_actors::controllers::shards::Members,
    watch::Receiver<u64>,
) {
    let verdicts: Arc<std::sync::Mutex<Verdicts>> = Arc::default();
    let (tx, rx) = watch::channel(0u64);
    let mut events = gossip.subscribe();
    let table = verdicts.clone();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                e = events.recv() => e,
                _ = shutdown.changed() => return,
            };
            {
                let mut v = table.lock().unwrap_or_else(|e| e.into_inner());
                match &event {
                    Ok(MemberEvent::Dead(m)) => {
                        let hollow = m
                            .roles
                            .iter()
                            .find_map(|r| r.strip_prefix(HOLLOW_ROLE)?.parse().ok())
                            .unwrap_or(0);
                        let mut names: Vec<String> = hollow_names(&m.name, hollow).collect();
                        names.push(m.name.clone());
                        v.dead.insert(m.name.clone(), names);
                        v.left.remove(&m.name);
                    }
                    Ok(MemberEvent::Left(m)) => {
                        v.dead.remove(&m.name);
                        v.left.insert(m.name.clone());
                    }
                    Ok(MemberEvent::Joined(m)) => {
                        v.dead.remove(&m.name);
                        v.left.remove(&m.name);
                    }
                    Ok(MemberEvent::Updated(_)) => {}
                    // Missed events: keep only verdicts gossip still stands by.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let alive: Vec<String> =
                            gossip.live_members().into_iter().map(|m| m.name).collect();
                        v.dead.retain(|name, _| !alive.contains(name));
                        v.left.retain(|name| !alive.contains(name));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    });
    let dead: flotilla_actors::controllers::shards::Members = {
        let verdicts = verdicts.clone();
        Arc::new(move || {
            let v = verdicts.lock().unwrap_or_else(|e| e.into_inner());
            v.dead.values().flatten().cloned().collect()
        })
    };
    let gone: flotilla_actors::controllers::shards::Members = Arc::new(move || {
        let v = verdicts.lock().unwrap_or_else(|e| e.into_inner());
        v.dead.keys().chain(v.left.iter()).cloned().collect()
    });
    (dead, gone, rx)
}

/// The gossip role of a node serving hollow nodes: `hollow=N`.
const HOLLOW_ROLE: &str = "hollow=";

/// The names of the hollow nodes a node serves.
fn hollow_names(node: &str, n: usize) -> impl Iterator<Item = String> + '_ {
    (0..n).map(move |i| format!("{node}-hollow-{i}"))
}

/// Ready = a leader is known. Published over gossip and served at /readyz.
async fn publish_readiness(store: Store, gossip: Gossip, mut shutdown: watch::Receiver<bool>) {
    let mut ready = false;
    loop {
        let now_ready = store.leader_name().is_some();
        if now_ready != ready {
            ready = now_ready;
            gossip.set_ready(ready).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn router(state: Arc<AppState>) -> axum::Router {
    let mut router = axum::Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(STATUS_PATH, get(status))
        .route(REMOVE_PATH, post(remove_node));
    if state.chaos {
        // Without --chaos these routes do not exist: a request gets 404.
        router = router.route(
            FAULTS_PATH,
            get(get_faults).put(put_faults).delete(clear_faults),
        );
    }
    let store = state.store.clone();
    let pods: Arc<dyn flotilla_api::pods::PodProxy> = Arc::new(KubeletProxy {
        rpc: state.rpc.clone(),
        gossip: state.gossip.clone(),
    });
    router
        .with_state(state)
        .merge(flotilla_api::router(store, Some(pods)))
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.store.leader_name().is_some() {
        (StatusCode::OK, "ok").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no raft leader known").into_response()
    }
}

#[derive(Deserialize)]
struct StatusQuery {
    #[serde(default)]
    leader: bool,
}

fn store_error(e: StoreError) -> Response {
    let code = match e {
        StoreError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        StoreError::NoLeader(_) | StoreError::NotLeader | StoreError::Unavailable(_) => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (code, Json(serde_json::json!({ "error": e.to_string() }))).into_response()
}

async fn status(State(state): State<Arc<AppState>>, Query(q): Query<StatusQuery>) -> Response {
    let raft = if q.leader {
        match state.store.leader_status().await {
            Ok(s) => s,
            Err(e) => return store_error(e),
        }
    } else {
        state.store.status()
    };
    let me = &state.me;
    Json(NodeStatus {
        name: me.name.clone(),
        generation_id: me.generation_id,
        version: me.version.clone(),
        api_addr: me.api_addr.to_string(),
        rpc_addr: me.rpc_addr.to_string(),
        gossip_addr: me.gossip_addr.to_string(),
        ready: state.store.leader_name().is_some(),
        chaos: state.chaos,
        members: state.gossip.members(),
        raft,
    })
    .into_response()
}

#[derive(Deserialize)]
struct RemoveQuery {
    node: String,
}

async fn remove_node(State(state): State<Arc<AppState>>, Query(q): Query<RemoveQuery>) -> Response {
    match state.store.remove_node(&q.node).await {
        Ok(()) => Json(serde_json::json!({ "removed": q.node })).into_response(),
        Err(e) => store_error(e),
    }
}

async fn get_faults(State(state): State<Arc<AppState>>) -> Json<FaultRules> {
    Json(state.faults.rules())
}

async fn put_faults(
    State(state): State<Arc<AppState>>,
    Json(rules): Json<FaultRules>,
) -> Json<FaultRules> {
    tracing::warn!(?rules, "fault rules set");
    state.faults.set(rules);
    Json(state.faults.rules())
}

async fn clear_faults(State(state): State<Arc<AppState>>) -> Json<FaultRules> {
    tracing::warn!("fault rules cleared");
    state.faults.clear();
    Json(state.faults.rules())
}

/// Reaches the kubelet of the node a pod is bound to, over mesh RPC.
struct KubeletProxy {
    rpc: RpcEndpoint,
    gossip: Gossip,
}

impl KubeletProxy {
    /// The RPC address of a live node.
    fn kubelet_of(&self, node: &str) -> Result<std::net::SocketAddr, String> {
        self.gossip
            .members()
            .into_iter()
            .find(|m| m.name == node && m.alive)
            .map(|m| m.rpc_addr)
            .ok_or_else(|| format!("node {node} is not reachable"))
    }
}

impl flotilla_api::pods::PodProxy for KubeletProxy {
    fn exec(
        &self,
        node: &str,
        req: flotilla_api::pods::ExecRequest,
        input: futures::stream::BoxStream<'static, flotilla_api::pods::ExecInput>,
    ) -> futures::future::BoxFuture<
        'static,
        Result<futures::stream::BoxStream<'static, flotilla_api::pods::ExecOutput>, String>,
    > {
        use flotilla_actors::kubelet::logs::{KubeletRequest, SERVICE};
        use flotilla_api::pods::ExecOutput;
        use futures::{FutureExt, StreamExt};
        let rpc = self.rpc.clone();
        let addr = self.kubelet_of(node);
        let node = node.to_owned();
        async move {
            let input = input
                .filter_map(|i| futures::future::ready(flotilla_mesh::encode(&i).ok()))
                .boxed();
            let frames = rpc
                .call_duplex::<_, ExecOutput>(
                    addr?,
                    SERVICE,
                    &KubeletRequest::Exec(req),
                    input,
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| format!("reaching the kubelet of {node}: {e}"))?;
            Ok(frames
                .map(|f| f.unwrap_or_else(|e| ExecOutput::Error(format!("exec session: {e}"))))
                .boxed())
        }
        .boxed()
    }

    fn logs(
        &self,
        node: &str,
        req: flotilla_api::pods::LogRequest,
    ) -> futures::future::BoxFuture<
        'static,
        Result<futures::stream::BoxStream<'static, Result<axum::body::Bytes, String>>, String>,
    > {
        use flotilla_actors::kubelet::logs::{KubeletRequest, LogFrame, SERVICE};
        use futures::{FutureExt, StreamExt};
        let rpc = self.rpc.clone();
        let addr = self.kubelet_of(node);
        let node = node.to_owned();
        async move {
            let addr = addr?;
            let mut frames = rpc
                .call_stream::<_, LogFrame>(
                    addr,
                    SERVICE,
                    &KubeletRequest::Logs(req),
                    Duration::from_secs(5),
                )
                .await
                .map_err(|e| format!("reaching the kubelet of {node}: {e}"))?;
            // The first frame says whether there is a log at all.
            let first = match frames.next().await {
                None => return Ok(futures::stream::empty().boxed()),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(Err(message))) => return Err(message),
                Some(Ok(Ok(bytes))) => axum::body::Bytes::from(bytes),
            };
            let rest = frames.map(|f| match f {
                Ok(Ok(bytes)) => Ok(axum::body::Bytes::from(bytes)),
                Ok(Err(message)) => Err(message),
                Err(e) => Err(e.to_string()),
            });
            Ok(futures::stream::once(async move { Ok(first) })
                .chain(rest)
                .boxed())
        }
        .boxed()
    }
}
