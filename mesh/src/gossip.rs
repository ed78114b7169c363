//! Membership and failure detection over chitchat (UDP scuttlebutt + phi-accrual detector).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chitchat::{
    Chitchat, ChitchatConfig, ChitchatHandle, ChitchatId, FailureDetectorConfig, NodeState,
    ProtocolVersion, spawn_chitchat,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;
use tracing::{debug, info};

use crate::error::MeshError;
use crate::faults::FaultPlane;
use crate::gossip_transport::FaultyTransport;

/// Gossip keys every node publishes. Keys not listed here are free for [`Gossip::set_key`].
pub mod keys {
    pub const RPC_ADDR: &str = "rpc_addr";
    pub const API_ADDR: &str = "api_addr";
    /// Comma-separated role names.
    pub const ROLES: &str = "roles";
    /// "true" / "false".
    pub const READY: &str = "ready";
    pub const VERSION: &str = "version";
    /// One key per capacity entry: `capacity.<name>`.
    pub const CAPACITY_PREFIX: &str = "capacity.";
    /// Advisory; set through [`super::Gossip::set_key`].
    pub const POD_CIDR: &str = "pod_cidr";
    /// Set to "true" by [`super::Gossip::leave`] just before the node stops.
    pub const LEAVING: &str = "leaving";
}

/// What the mesh knows about one node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberInfo {
    pub name: String,
    /// Changes on every restart (e.g. unix nanos at start).
    pub generation_id: u64,
    pub gossip_addr: SocketAddr,
    pub rpc_addr: SocketAddr,
    pub api_addr: SocketAddr,
    pub roles: Vec<String>,
    pub ready: bool,
    pub capacity: BTreeMap<String, String>,
    pub version: String,
    /// False once the failure detector declared it dead or it left.
    pub alive: bool,
}

/// Membership changes, as seen by this node (self included).
///
/// - `Joined`: a node became live: first sighting, back after `Dead`, or a restart (a new
///   `generation_id` replaces the old one and is reported as `Joined`, never `Updated`).
/// - `Updated`: a live node changed a published field (e.g. `ready`).
/// - `Dead`: the failure detector lost it without it announcing departure.
/// - `Left`: it announced departure ([`Gossip::leave`]); no `Dead` follows.
#[derive(Debug, Clone)]
pub enum MemberEvent {
    Joined(MemberInfo),
    Updated(MemberInfo),
    Dead(MemberInfo),
    Left(MemberInfo),
}

/// Gossip settings. Failure-detector fields map to chitchat's [`FailureDetectorConfig`]:
/// chitchat's "phi" is `time since last heartbeat / mean heartbeat interval`, so a node is
/// declared dead after roughly `phi_threshold × gossip_interval` of silence.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    pub node_name: String,
    pub cluster_id: String,
    pub listen_addr: SocketAddr,
    /// Address peers gossip to (must have a concrete port).
    pub advertise_addr: SocketAddr,
    /// `host:port` or `ip:port` of seed nodes.
    pub seeds: Vec<String>,
    pub gossip_interval: Duration,
    pub phi_threshold: f64,
    /// Heartbeat intervals remembered per node.
    pub sampling_window_size: usize,
    /// Heartbeat gaps longer than this are not sampled (so a healed partition does not
    /// inflate the mean and slow later detection).
    pub max_interval: Duration,
    /// Prior mean interval used before samples accumulate (lenient while joining).
    pub initial_interval: Duration,
    /// How long a dead node stays listed (alive=false) before it is forgotten.
    pub dead_node_grace_period: Duration,
    /// How long deleted keys are kept as tombstones.
    pub marked_for_deletion_grace_period: Duration,
    /// How long [`Gossip::leave`] keeps gossiping after announcing departure.
    pub leave_propagation: Duration,
}

impl GossipConfig {
    /// LAN defaults: 200 ms gossip, phi 8 (a SIGKILLed peer is declared dead after ~1.6–2 s
    /// of silence once samples settle), lenient 500 ms prior while joining.
    pub fn lan_defaults(node_name: &str, cluster_id: &str, listen_addr: SocketAddr) -> Self {
        GossipConfig {
            node_name: node_name.to_string(),
            cluster_id: cluster_id.to_string(),
            listen_addr,
            advertise_addr: listen_addr,
            seeds: Vec::new(),
            gossip_interval: Duration::from_millis(200),
            phi_threshold: 8.0,
            sampling_window_size: 1000,
            max_interval: Duration::from_secs(5),
            initial_interval: Duration::from_millis(500),
            dead_node_grace_period: Duration::from_secs(3600),
            marked_for_deletion_grace_period: Duration::from_secs(3600),
            leave_propagation: Duration::from_secs(1),
        }
    }
}

struct Entry {
    info: MemberInfo,
    left: bool,
    /// When it stopped being alive (for forgetting dead nodes).
    since: Instant,
}

#[derive(Default)]
struct Table {
    members: BTreeMap<String, Entry>,
}

struct Inner {
    name: String,
    config: GossipConfig,
    handle: Mutex<Option<ChitchatHandle>>,
    chitchat: Arc<tokio::sync::Mutex<Chitchat>>,
    table: Arc<RwLock<Table>>,
    events: broadcast::Sender<MemberEvent>,
}

/// Running gossip membership. Cheap to clone. Dropping every clone without [`leave`]
/// stops gossiping abruptly (peers then see `Dead`), like a crash.
///
/// [`leave`]: Gossip::leave
#[derive(Clone)]
pub struct Gossip {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip")
            .field("name", &self.inner.name)
            .finish()
    }
}

fn member_kvs(me: &MemberInfo) -> Vec<(String, String)> {
    let mut kvs = vec![
        (keys::RPC_ADDR.to_string(), me.rpc_addr.to_string()),
        (keys::API_ADDR.to_string(), me.api_addr.to_string()),
        (keys::ROLES.to_string(), me.roles.join(",")),
        (keys::READY.to_string(), me.ready.to_string()),
        (keys::VERSION.to_string(), me.version.clone()),
    ];
    for (k, v) in &me.capacity {
        kvs.push((format!("{}{k}", keys::CAPACITY_PREFIX), v.clone()));
    }
    kvs
}

/// Builds a member from gossiped state; `None` until its required keys have arrived
/// (or if a peer published garbage).
fn parse_member(id: &ChitchatId, state: &NodeState) -> Option<MemberInfo> {
    let rpc_addr = state.get(keys::RPC_ADDR)?.parse().ok()?;
    let api_addr = state.get(keys::API_ADDR)?.parse().ok()?;
    let roles = state
        .get(keys::ROLES)
        .unwrap_or_default()
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect();
    let capacity = state
        .iter_prefix(keys::CAPACITY_PREFIX)
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(keys::CAPACITY_PREFIX)?;
            Some((name.to_string(), v.value.clone()))
        })
        .collect();
    Some(MemberInfo {
        name: id.node_id.to_string(),
        generation_id: id.generation_id,
        gossip_addr: id.gossip_advertise_addr,
        rpc_addr,
        api_addr,
        roles,
        ready: state.get(keys::READY) == Some("true"),
        capacity,
        version: state.get(keys::VERSION).unwrap_or_default().to_string(),
        alive: true,
    })
}

impl Gossip {
    /// Starts gossiping as `me` (its `name` and `gossip_addr` are taken from `config`).
    pub async fn start(
        config: GossipConfig,
        me: MemberInfo,
        faults: FaultPlane,
    ) -> Result<Gossip, MeshError> {
        if config.node_name.is_empty() {
            return Err(MeshError::Config("node_name must not be empty".to_string()));
        }
        if config.advertise_addr.port() == 0 {
            return Err(MeshError::Config(
                "gossip advertise_addr needs a concrete port".to_string(),
            ));
        }
        let mut me = me;
        me.name = config.node_name.clone();
        me.gossip_addr = config.advertise_addr;
        me.alive = true;

        let chitchat_config = ChitchatConfig {
            chitchat_id: ChitchatId::new(
                config.node_name.clone(),
                me.generation_id,
                config.advertise_addr,
            ),
            cluster_id: config.cluster_id.clone(),
            gossip_interval: config.gossip_interval,
            listen_addr: config.listen_addr,
            seed_nodes: config.seeds.clone(),
            failure_detector_config: FailureDetectorConfig {
                phi_threshold: config.phi_threshold,
                sampling_window_size: config.sampling_window_size.max(1),
                max_interval: config.max_interval,
                initial_interval: config.initial_interval,
                dead_node_grace_period: config.dead_node_grace_period,
            },
            marked_for_deletion_grace_period: config.marked_for_deletion_grace_period,
            catchup_callback: None,
            extra_liveness_predicate: None,
            protocol_version: ProtocolVersion::V1,
        };
        let transport = FaultyTransport {
            faults: faults.clone(),
        };
        let handle = spawn_chitchat(chitchat_config, member_kvs(&me), &transport)
            .await
            .map_err(|e| MeshError::Gossip(format!("start on {}: {e:#}", config.listen_addr)))?;
        let chitchat = handle.chitchat();
        let watcher = chitchat.lock().await.live_nodes_watcher();

        let table = Arc::new(RwLock::new(Table::default()));
        table
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .members
            .insert(
                me.name.clone(),
                Entry {
                    info: me.clone(),
                    left: false,
                    since: Instant::now(),
                },
            );
        let (events, _) = broadcast::channel(1024);
        tokio::spawn(watch_members(
            watcher,
            table.clone(),
            events.clone(),
            faults,
            config.dead_node_grace_period,
        ));
        info!(node = %me.name, addr = %config.advertise_addr, "gossip started");
        Ok(Gossip {
            inner: Arc::new(Inner {
                name: me.name,
                config,
                handle: Mutex::new(Some(handle)),
                chitchat,
                table,
                events,
            }),
        })
    }

    /// Every known member including self; dead and departed ones have `alive == false`.
    pub fn members(&self) -> Vec<MemberInfo> {
        self.read_table()
            .members
            .values()
            .map(|e| e.info.clone())
            .collect()
    }

    pub fn live_members(&self) -> Vec<MemberInfo> {
        self.read_table()
            .members
            .values()
            .filter(|e| e.info.alive)
            .map(|e| e.info.clone())
            .collect()
    }

    /// Membership events from now on. Subscribe first, then read [`members`](Self::members)
    /// for the starting point.
    pub fn subscribe(&self) -> broadcast::Receiver<MemberEvent> {
        self.inner.events.subscribe()
    }

    pub fn node_name(&self) -> &str {
        &self.inner.name
    }

    pub async fn set_ready(&self, ready: bool) {
        self.set_key(keys::READY, if ready { "true" } else { "false" })
            .await;
        // Reflect it locally now instead of after the next gossip round, so callers that
        // read live_members() right away see their own change.
        let updated = {
            let mut table = self.inner.table.write().unwrap_or_else(|e| e.into_inner());
            match table.members.get_mut(&self.inner.name) {
                Some(e) if e.info.alive && e.info.ready != ready => {
                    e.info.ready = ready;
                    Some(e.info.clone())
                }
                _ => None,
            }
        };
        if let Some(info) = updated {
            let _ = self.inner.events.send(MemberEvent::Updated(info));
        }
    }

    /// Publishes an advisory key on this node (see [`keys`] for reserved names).
    pub async fn set_key(&self, key: &str, value: &str) {
        self.inner
            .chitchat
            .lock()
            .await
            .self_node_state()
            .set(key, value);
    }

    /// All keys currently published by node `name` (its latest generation).
    pub async fn node_keys(&self, name: &str) -> BTreeMap<String, String> {
        let chitchat = self.inner.chitchat.lock().await;
        chitchat
            .node_states()
            .iter()
            .filter(|(id, _)| &*id.node_id == name)
            .max_by_key(|(id, _)| id.generation_id)
            .map(|(_, state)| {
                state
                    .key_values()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Graceful departure: announce `leaving`, push it to live peers for
    /// `leave_propagation`, then stop gossiping. Peers report `Left`, not `Dead`.
    pub async fn leave(&self) {
        let peers: Vec<SocketAddr> = {
            let mut chitchat = self.inner.chitchat.lock().await;
            chitchat.self_node_state().set(keys::LEAVING, "true");
            let me = chitchat.self_chitchat_id().clone();
            chitchat
                .live_nodes()
                .filter(|id| **id != me)
                .map(|id| id.gossip_advertise_addr)
                .collect()
        };
        let handle = self
            .inner
            .handle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(handle) = handle else { return };
        for addr in peers {
            let _ = handle.gossip(addr);
        }
        tokio::time::sleep(self.inner.config.leave_propagation).await;
        if let Err(e) = handle.shutdown().await {
            debug!(error = %e, "gossip shutdown");
        }
        info!(node = %self.inner.name, "left the mesh");
    }

    fn read_table(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        self.inner.table.read().unwrap_or_else(|e| e.into_inner())
    }
}

/// Turns chitchat's live-set snapshots into member events and keeps the table current.
/// Ends when chitchat is dropped.
async fn watch_members(
    mut watcher: watch::Receiver<BTreeMap<ChitchatId, NodeState>>,
    table: Arc<RwLock<Table>>,
    events: broadcast::Sender<MemberEvent>,
    faults: FaultPlane,
    forget_after: Duration,
) {
    let mut prune = tokio::time::interval(Duration::from_secs(5));
    loop {
        let live = watcher.borrow_and_update().clone();
        let emitted = {
            let mut table = table.write().unwrap_or_else(|e| e.into_inner());
            apply_live_set(&mut table, &live, &faults)
        };
        for ev in emitted {
            debug!(event = ?ev, "member event");
            let _ = events.send(ev);
        }
        tokio::select! {
            changed = watcher.changed() => if changed.is_err() { return },
            _ = prune.tick() => {
                let now = Instant::now();
                let mut table = table.write().unwrap_or_else(|e| e.into_inner());
                table.members.retain(|_, e| e.info.alive || now.duration_since(e.since) < forget_after);
            }
        }
    }
}

fn apply_live_set(
    table: &mut Table,
    live: &BTreeMap<ChitchatId, NodeState>,
    faults: &FaultPlane,
) -> Vec<MemberEvent> {
    // Latest generation per name.
    let mut current: BTreeMap<String, (MemberInfo, bool)> = BTreeMap::new();
    for (id, state) in live {
        let Some(info) = parse_member(id, state) else {
            continue;
        };
        let leaving = state.get(keys::LEAVING) == Some("true");
        match current.get(&info.name) {
            Some((existing, _)) if existing.generation_id >= info.generation_id => {}
            _ => {
                current.insert(info.name.clone(), (info, leaving));
            }
        }
    }

    let now = Instant::now();
    let mut out = Vec::new();
    for (name, (info, leaving)) in &current {
        faults.learn_peer(name, &[info.gossip_addr, info.rpc_addr]);
        let Some(entry) = table.members.get_mut(name) else {
            if !leaving {
                out.push(MemberEvent::Joined(info.clone()));
                table.members.insert(
                    name.clone(),
                    Entry {
                        info: info.clone(),
                        left: false,
                        since: now,
                    },
                );
            }
            continue;
        };
        if info.generation_id < entry.info.generation_id {
            continue; // a stale incarnation still gossiped about
        }
        let new_generation = info.generation_id > entry.info.generation_id;
        if *leaving {
            if !entry.left || new_generation {
                let mut gone = info.clone();
                gone.alive = false;
                entry.info = gone.clone();
                entry.left = true;
                entry.since = now;
                out.push(MemberEvent::Left(gone));
            }
            continue;
        }
        if new_generation || (!entry.info.alive && !entry.left) {
            entry.info = info.clone();
            entry.left = false;
            out.push(MemberEvent::Joined(info.clone()));
        } else if entry.info.alive && entry.info != *info {
            entry.info = info.clone();
            out.push(MemberEvent::Updated(info.clone()));
        }
    }

    let live_names: HashSet<&String> = current.keys().collect();
    for (name, entry) in table.members.iter_mut() {
        if entry.info.alive && !live_names.contains(name) {
            entry.info.alive = false;
            entry.since = now;
            out.push(MemberEvent::Dead(entry.info.clone()));
        }
    }
    out
}
