//! The versioned store a node serves: reads, transactions and watches over the Raft-replicated
//! state machine, with requests forwarded to the leader where Raft needs one.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use flotilla_mesh::{RpcEndpoint, RpcError};
use futures::StreamExt;
use futures::stream::BoxStream;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ReadPolicy, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::kv::{Command, CommandResult, Event, KeyValue, TxnRequest, TxnResponse};
use crate::log_store::LogStore;
use crate::network::{Network, RAFT_SERVICE, RaftService};
use crate::service::{KV_SERVICE, KvRequest, KvResponse, KvService};
use crate::state_machine::{HistoryLimits, HubMessage, StateMachine};
use crate::types::{NodeMeta, Raft, node_id_of};

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Read {
    /// Confirmed with the leader (read-index) before reading the local replica.
    #[default]
    Linearizable,
    /// Whatever this replica has applied; may be behind the leader.
    Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetResult {
    pub kv: Option<KeyValue>,
    /// The store revision the read saw.
    pub revision: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub revision: u64,
}

/// One member of the Raft group as the answering node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub id: u64,
    pub rpc_addr: String,
    /// "voter" or "learner".
    pub role: String,
    /// Last log index known replicated to it (known only on the leader).
    pub matched_index: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftStatus {
    pub node: String,
    pub node_id: u64,
    /// Leader, Follower, Candidate, Learner or Shutdown.
    pub state: String,
    pub leader: Option<String>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub revision: u64,
    pub members: Vec<MemberStatus>,
}

/// Settings of the consensus layer of one node.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// This node's advertised RPC address, recorded in the Raft membership.
    pub rpc_addr: SocketAddr,
    /// Initialise a new single-voter cluster if this node has no Raft state yet.
    pub bootstrap: bool,
    pub heartbeat: Duration,
    pub election_timeout_min: Duration,
    pub election_timeout_max: Duration,
    /// Build a snapshot (and purge the log) after this many entries.
    pub snapshot_every: u64,
    /// Log entries kept behind a snapshot so briefly lagging followers avoid a snapshot.
    pub keep_behind_snapshot: u64,
    /// Watch history kept in memory for watches that resume from an older revision.
    pub watch_history: HistoryLimits,
    /// redb page cache of the state machine (the log gets a quarter of it).
    pub cache_bytes: usize,
    /// How long one store operation may take, including leader changes.
    pub op_timeout: Duration,
}

impl StoreConfig {
    pub fn new(node_name: &str, data_dir: PathBuf, rpc_addr: SocketAddr) -> StoreConfig {
        StoreConfig {
            node_name: node_name.to_owned(),
            data_dir,
            rpc_addr,
            bootstrap: false,
            heartbeat: Duration::from_millis(100),
            election_timeout_min: Duration::from_millis(500),
            election_timeout_max: Duration::from_millis(1000),
            snapshot_every: 100_000,
            keep_behind_snapshot: 5_000,
            watch_history: HistoryLimits {
                max_events: 50_000,
                max_bytes: 64 << 20,
            },
            cache_bytes: 64 << 20,
            op_timeout: Duration::from_secs(10),
        }
    }
}

pub(crate) struct StoreInner {
    pub(crate) config: StoreConfig,
    pub(crate) node_id: u64,
    pub(crate) raft: Raft,
    pub(crate) sm: StateMachine,
    pub(crate) rpc: RpcEndpoint,
}

/// A node's handle to the replicated store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<StoreInner>,
}

/// Where requests that need the leader go right now.
enum LeaderTarget {
    Me,
    Remote(SocketAddr),
    Unknown,
}

/// Retry pacing for operations that wait for a leader.
struct Retry {
    deadline: Instant,
    backoff: Duration,
}

impl Retry {
    fn new(timeout: Duration) -> Retry {
        Retry {
            deadline: Instant::now() + timeout,
            backoff: Duration::from_millis(10),
        }
    }

    fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Sleeps before the next attempt; `Err` once the deadline has passed.
    async fn wait(&mut self, what: &str) -> Result<(), StoreError> {
        if Instant::now() + self.backoff >= self.deadline {
            return Err(StoreError::NoLeader(format!("{what}: deadline passed")));
        }
        // Jitter keeps many retrying clients from moving in lockstep.
        let jitter = rand::random::<u64>() % (self.backoff.as_millis() as u64 + 1);
        tokio::time::sleep(self.backoff + Duration::from_millis(jitter / 2)).await;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(100));
        Ok(())
    }
}

impl Store {
    /// Opens the on-disk state, starts Raft and registers the `raft` and `kv` RPC services.
    pub async fn start(config: StoreConfig, rpc: RpcEndpoint) -> Result<Store, StoreError> {
        std::fs::create_dir_all(&config.data_dir)?;
        // redb's default cache is 1 GiB per file; a node holds two and should stay small.
        let log = LogStore::open(
            &config.data_dir.join("raft-log.redb"),
            config.cache_bytes / 4,
        )?;
        let sm = StateMachine::open(&config.data_dir, config.watch_history, config.cache_bytes)?;
        let raft_config = openraft::Config {
            cluster_name: "flotilla".into(),
            heartbeat_interval: config.heartbeat.as_millis() as u64,
            election_timeout_min: config.election_timeout_min.as_millis() as u64,
            election_timeout_max: config.election_timeout_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.keep_behind_snapshot,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StoreError::Invalid(format!("raft config: {e}")))?;
        let node_id = node_id_of(&config.node_name);
        let network = Network { rpc: rpc.clone() };
        let raft = Raft::new(node_id, Arc::new(raft_config), network, log, sm.clone())
            .await
            .map_err(|e| StoreError::Unavailable(format!("raft start: {e}")))?;
        rpc.register(RAFT_SERVICE, Arc::new(RaftService { raft: raft.clone() }));

        let store = Store {
            inner: Arc::new(StoreInner {
                node_id,
                raft,
                sm,
                rpc: rpc.clone(),
                config,
            }),
        };
        rpc.register(
            KV_SERVICE,
            Arc::new(KvService {
                store: Arc::downgrade(&store.inner),
            }),
        );

        tokio::spawn(log_leadership(
            store.inner.raft.clone(),
            store.inner.config.node_name.clone(),
        ));

        let initialized = store
            .inner
            .raft
            .is_initialized()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        if store.inner.config.bootstrap && !initialized {
            let me = store.node_meta();
            tracing::info!(node = %me, "initialising a new cluster");
            store
                .inner
                .raft
                .initialize(BTreeMap::from([(node_id, me)]))
                .await
                .map_err(|e| StoreError::Unavailable(format!("initialize: {e}")))?;
        }
        Ok(store)
    }

    pub fn node_meta(&self) -> NodeMeta {
        NodeMeta {
            name: self.inner.config.node_name.clone(),
            rpc_addr: self.inner.config.rpc_addr.to_string(),
        }
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// The revision this replica has applied.
    pub fn local_revision(&self) -> u64 {
        self.inner.sm.revision()
    }

    pub fn is_leader(&self) -> bool {
        self.inner.raft.metrics().borrow_watched().state == ServerState::Leader
    }

    /// The name of the current leader, if one is known.
    pub fn leader_name(&self) -> Option<String> {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.name.clone())
    }

    fn leader_target(&self) -> LeaderTarget {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        match m.current_leader {
            Some(id) if id == self.inner.node_id => LeaderTarget::Me,
            Some(id) => match m.membership_config.membership().get_node(&id) {
                Some(node) => match node.rpc_addr.parse() {
                    Ok(addr) => LeaderTarget::Remote(addr),
                    Err(_) => LeaderTarget::Unknown,
                },
                None => LeaderTarget::Unknown,
            },
            None => LeaderTarget::Unknown,
        }
    }

    /// Sends `req` to the leader's `kv` service. `Ok(None)` means "not sent or refused as
    /// not-leader: safe to retry".
    ///
    /// If this node learns of a new leader while the call is in flight, the call is abandoned
    /// with `Unknown`: the old leader is probably dead, and waiting for the RPC timeout would
    /// stretch every failover to that timeout.
    async fn call_leader(
        &self,
        addr: SocketAddr,
        req: &KvRequest,
        timeout: Duration,
    ) -> Result<Option<KvResponse>, StoreError> {
        let leader_before = self.inner.raft.metrics().borrow_watched().current_leader;
        let call = self.inner.rpc.call(addr, KV_SERVICE, req, timeout);
        let res: Result<Result<KvResponse, StoreError>, RpcError> = tokio::select! {
            res = call => res,
            _ = self.leader_changed(leader_before) => {
                return Err(StoreError::Unknown("the leader changed while the request was in flight".into()));
            }
        };
        match res {
            Ok(Ok(resp)) => Ok(Some(resp)),
            Ok(Err(StoreError::NotLeader)) | Ok(Err(StoreError::NoLeader(_))) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(RpcError::Unreachable(_)) => Ok(None),
            Err(RpcError::Timeout(m)) | Err(RpcError::Network(m)) => Err(StoreError::Unknown(m)),
            Err(RpcError::Remote(r)) => Err(StoreError::Unavailable(r.message)),
        }
    }

    /// Resolves once the known leader differs from `from`.
    async fn leader_changed(&self, from: Option<u64>) {
        let mut metrics = self.inner.raft.metrics();
        loop {
            if metrics.borrow_watched().current_leader != from {
                return;
            }
            if metrics.changed().await.is_err() {
                // Raft stopped: nothing will change any more.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Applies a transaction through Raft, forwarding it to the leader if needed.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, StoreError> {
        match self.write(Command::Txn(req)).await? {
            CommandResult::Txn(t) => Ok(t),
            other => Err(StoreError::Storage(format!("unexpected result {other:?}"))),
        }
    }

    /// Forgets watch history at and below `revision` on every replica.
    pub async fn compact(&self, revision: u64) -> Result<u64, StoreError> {
        match self.write(Command::Compact { revision }).await? {
            CommandResult::Compacted { revision } => Ok(revision),
            other => Err(StoreError::Storage(format!("unexpected result {other:?}"))),
        }
    }

    async fn write(&self, cmd: Command) -> Result<CommandResult, StoreError> {
        let mut retry = Retry::new(self.inner.config.op_timeout);
        loop {
            match self.leader_target() {
                LeaderTarget::Me => match self.write_local(cmd.clone()).await {
                    Err(StoreError::NotLeader) => {}
                    other => return other,
                },
                LeaderTarget::Remote(addr) => {
                    let req = KvRequest::Write { cmd: cmd.clone() };
                    if let Some(resp) = self.call_leader(addr, &req, retry.remaining()).await? {
                        return match resp {
                            KvResponse::Written(r) => Ok(r),
                            other => Err(StoreError::Storage(format!("unexpected {other:?}"))),
                        };
                    }
                }
                LeaderTarget::Unknown => {}
            }
            retry.wait("write").await?;
        }
    }

    /// Proposes on this node only; `NotLeader` if it is not the leader (nothing was proposed).
    pub(crate) async fn write_local(&self, cmd: Command) -> Result<CommandResult, StoreError> {
        match self.inner.raft.client_write(cmd).await {
            Ok(resp) => Ok(resp.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                Err(StoreError::NotLeader)
            }
            Err(e) => Err(StoreError::Unknown(e.to_string())),
        }
    }

    /// On the leader: confirms leadership with a quorum and returns the index a linearizable
    /// read must wait for.
    pub(crate) async fn read_index_local(&self) -> Result<u64, StoreError> {
        match self
            .inner
            .raft
            .ensure_linearizable(ReadPolicy::ReadIndex)
            .await
        {
            Ok(read) => Ok(read.log_id().index),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {
                Err(StoreError::NotLeader)
            }
            Err(e) => Err(StoreError::NoLeader(e.to_string())),
        }
    }

    /// Waits until this replica has applied everything committed before the call.
    async fn read_barrier(&self) -> Result<(), StoreError> {
        let mut retry = Retry::new(self.inner.config.op_timeout);
        loop {
            let index = match self.leader_target() {
                LeaderTarget::Me => match self.read_index_local().await {
                    // ensure_linearizable has already waited for the local apply.
                    Ok(_) => return Ok(()),
                    Err(StoreError::NotLeader) => None,
                    Err(e) => return Err(e),
                },
                LeaderTarget::Remote(addr) => {
                    match self
                        .call_leader(addr, &KvRequest::ReadIndex, retry.remaining())
                        .await
                    {
                        Ok(Some(KvResponse::ReadIndex(i))) => Some(i),
                        Ok(Some(other)) => {
                            return Err(StoreError::Storage(format!("unexpected {other:?}")));
                        }
                        Ok(None) => None,
                        // A read that did not get its answer can simply be tried again.
                        Err(StoreError::Unknown(_)) => None,
                        Err(e) => return Err(e),
                    }
                }
                LeaderTarget::Unknown => None,
            };
            if let Some(index) = index {
                self.inner
                    .raft
                    .wait(Some(retry.remaining()))
                    .applied_index_at_least(Some(index), "linearizable read")
                    .await
                    .map_err(|e| StoreError::NoLeader(format!("waiting for apply: {e}")))?;
                return Ok(());
            }
            retry.wait("read").await?;
        }
    }

    pub async fn get(&self, key: &str, read: Read) -> Result<GetResult, StoreError> {
        if read == Read::Linearizable {
            self.read_barrier().await?;
        }
        let (kv, revision) = self.inner.sm.get(key).await?;
        Ok(GetResult { kv, revision })
    }

    /// Every key under `prefix`, in key order, at most `limit` of them.
    pub async fn range(
        &self,
        prefix: &str,
        limit: usize,
        read: Read,
    ) -> Result<RangeResult, StoreError> {
        self.range_from(prefix, prefix, limit, read).await
    }

    /// Like [`Store::range`], from `start` (inclusive, inside `prefix`): one page of a list.
    pub async fn range_from(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        read: Read,
    ) -> Result<RangeResult, StoreError> {
        if read == Read::Linearizable {
            self.read_barrier().await?;
        }
        let (kvs, revision) = self.inner.sm.range(prefix, start, limit).await?;
        Ok(RangeResult { kvs, revision })
    }

    /// Changes under `prefix` from `from_revision` (inclusive; 0 = from now), served from this
    /// replica: it may trail the leader by the replication lag. The stream ends with `Expired`
    /// when the watcher falls too far behind or history is reset; relist and watch again.
    pub fn watch(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<BoxStream<'static, Result<Vec<Event>, StoreError>>, StoreError> {
        let start = self.inner.sm.watch_start(prefix, from_revision)?;
        let sm = self.inner.sm.clone();
        let prefix = prefix.to_owned();
        // Later messages may repeat backlog events; skip anything at or below what was sent.
        let sent_up_to = start
            .backlog
            .last()
            .map(|e| e.revision())
            .unwrap_or(start.from.saturating_sub(1));
        let backlog =
            futures::stream::iter((!start.backlog.is_empty()).then_some(Ok(start.backlog)));
        let live = futures::stream::unfold(
            (start.rx, prefix, sent_up_to, false, sm),
            |(mut rx, prefix, mut sent, done, sm)| async move {
                if done {
                    return None;
                }
                loop {
                    match rx.recv().await {
                        Ok(HubMessage::Events(events)) => {
                            let batch: Vec<Event> = events
                                .iter()
                                .filter(|e| e.revision() > sent && e.kv.key.starts_with(&prefix))
                                .cloned()
                                .collect();
                            if batch.is_empty() {
                                continue;
                            }
                            sent = batch.last().map(|e| e.revision()).unwrap_or(sent);
                            return Some((Ok(batch), (rx, prefix, sent, false, sm)));
                        }
                        Ok(HubMessage::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            let err = StoreError::Expired {
                                requested: sent + 1,
                                oldest: sm.watch_floor() + 1,
                            };
                            return Some((Err(err), (rx, prefix, sent, true, sm)));
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        );
        Ok(backlog.chain(live).boxed())
    }

    /// This node's view of Raft.
    pub fn status(&self) -> RaftStatus {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let name_of = |id: &u64| membership.get_node(id).map(|n| n.name.clone());
        let members = membership
            .nodes()
            .map(|(id, node)| MemberStatus {
                name: node.name.clone(),
                id: *id,
                rpc_addr: node.rpc_addr.clone(),
                role: if voters.contains(id) {
                    "voter"
                } else {
                    "learner"
                }
                .to_owned(),
                matched_index: m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map(|l| l.index)
                    .or_else(|| {
                        (*id == self.inner.node_id && m.state == ServerState::Leader)
                            .then_some(m.last_log_index)
                            .flatten()
                    }),
            })
            .collect();
        RaftStatus {
            node: self.inner.config.node_name.clone(),
            node_id: self.inner.node_id,
            state: format!("{:?}", m.state),
            leader: m.current_leader.as_ref().and_then(name_of),
            term: m.current_term,
            last_log_index: m.last_log_index,
            committed_index: m.cluster_committed.map(|l| l.index),
            applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            revision: self.inner.sm.revision(),
            members,
        }
    }

    /// The leader's view of Raft (with replication progress), fetched from the leader.
    pub async fn leader_status(&self) -> Result<RaftStatus, StoreError> {
        let mut retry = Retry::new(self.inner.config.op_timeout);
        loop {
            match self.leader_target() {
                LeaderTarget::Me => return Ok(self.status()),
                LeaderTarget::Remote(addr) => {
                    match self
                        .call_leader(addr, &KvRequest::Status, retry.remaining())
                        .await
                    {
                        Ok(Some(KvResponse::Status(s))) => return Ok(s),
                        Ok(Some(other)) => {
                            return Err(StoreError::Storage(format!("unexpected {other:?}")));
                        }
                        Ok(None) | Err(StoreError::Unknown(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                LeaderTarget::Unknown => {}
            }
            retry.wait("status").await?;
        }
    }

    /// Flushes the state machine and stops Raft.
    pub async fn shutdown(&self) {
        if let Err(e) = self.inner.sm.flush().await {
            tracing::warn!(error = %e, "flushing the state machine at shutdown");
        }
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
    }

    pub(crate) fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    pub(crate) fn config(&self) -> &StoreConfig {
        &self.inner.config
    }
}

/// Logs every change of this node's Raft role or of the known leader (operators read these to
/// reconstruct failovers). Ends when Raft stops.
async fn log_leadership(raft: Raft, node: String) {
    let mut metrics = raft.metrics();
    let mut last: Option<(ServerState, Option<u64>, u64)> = None;
    loop {
        let now = {
            let m = metrics.borrow_watched();
            (m.state, m.current_leader, m.current_term)
        };
        if last.as_ref().map(|l| (l.0, l.1)) != Some((now.0, now.1)) {
            let leader = now.1.and_then(|id| {
                raft.metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .map(|n| n.name.clone())
            });
            tracing::info!(node = %node, state = ?now.0, leader = ?leader, term = now.2, "raft role changed");
            last = Some(now);
        }
        if now.0 == ServerState::Shutdown || metrics.changed().await.is_err() {
            return;
        }
    }
}
