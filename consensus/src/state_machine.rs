//! The replicated state machine on redb: the key space with its revisions, plus the watch
//! history kept in memory.
//!
//! Durability: applies commit with `Durability::None` (the Raft log is the durable record and is
//! replayed from the last durable applied id after a crash); building a snapshot first forces a
//! durable commit, so the log is never purged past what the state machine has on disk.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, RaftSnapshotBuilder};
use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::error::StoreError;
use crate::kv::{
    Command, CommandResult, Event, EventKind, KeyValue, Op, OpResult, StoredValue, TxnRequest,
    TxnResponse, prefix_end,
};
use crate::log_store::io_err;
use crate::types::{LogId, SnapshotMeta, StoredMembership, TypeConfig};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_APPLIED: &str = "applied";
const KEY_MEMBERSHIP: &str = "membership";
const KEY_REVISION: &str = "revision";
const KEY_COMPACTED: &str = "compacted";

/// Largest batch applied on the state machine task itself rather than the blocking pool.
const INLINE_APPLY_MAX: usize = 64;

pub(crate) type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, Vec<u8>>;

/// What a watcher receives from the hub.
#[derive(Debug, Clone)]
pub(crate) enum HubMessage {
    /// Events of one applied batch, in revision order.
    Events(Arc<[Event]>),
    /// History was replaced (a snapshot was installed): every watcher must relist.
    Reset,
}

/// How much watch history a replica keeps in memory.
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_events: usize,
    pub max_bytes: usize,
}

/// Rough memory footprint of an event in the history.
fn event_bytes(e: &Event) -> usize {
    let value = |kv: &KeyValue| kv.key.len() + kv.value.len() + 48;
    value(&e.kv) + e.prev.as_ref().map(value).unwrap_or(0) + 32
}

/// Recent events, bounded in count and bytes, plus the fan-out channel to live watchers.
pub(crate) struct WatchHub {
    history: VecDeque<Event>,
    limits: HistoryLimits,
    bytes: usize,
    /// Events at or below this revision are no longer available.
    floor: u64,
    /// The revision the hub has seen applied.
    revision: u64,
    tx: broadcast::Sender<HubMessage>,
}

impl WatchHub {
    fn new(limits: HistoryLimits, revision: u64) -> WatchHub {
        let (tx, _) = broadcast::channel(1024);
        WatchHub {
            history: VecDeque::new(),
            limits: HistoryLimits {
                max_events: limits.max_events.max(1),
                max_bytes: limits.max_bytes,
            },
            bytes: 0,
            floor: revision,
            revision,
            tx,
        }
    }

    fn publish(&mut self, events: Vec<Event>, revision: u64) {
        self.revision = revision;
        if events.is_empty() {
            return;
        }
        for e in &events {
            self.bytes += event_bytes(e);
            self.history.push_back(e.clone());
        }
        while self.history.len() > self.limits.max_events || self.bytes > self.limits.max_bytes {
            match self.history.pop_front() {
                Some(old) => {
                    self.bytes = self.bytes.saturating_sub(event_bytes(&old));
                    self.floor = self.floor.max(old.revision());
                }
                None => break,
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(HubMessage::Events(events.into()));
    }

    fn compact(&mut self, revision: u64) {
        while self
            .history
            .front()
            .is_some_and(|e| e.revision() <= revision)
        {
            if let Some(old) = self.history.pop_front() {
                self.bytes = self.bytes.saturating_sub(event_bytes(&old));
            }
        }
        self.floor = self.floor.max(revision.min(self.revision));
    }

    fn reset(&mut self, revision: u64) {
        self.history.clear();
        self.bytes = 0;
        self.floor = revision;
        self.revision = revision;
        let _ = self.tx.send(HubMessage::Reset);
    }
}

/// The start of a watch: the backlog it must replay and the live channel after it.
pub(crate) struct WatchStart {
    /// The first revision the watcher asked for (resolved from 0 = "next").
    pub from: u64,
    pub backlog: Vec<Event>,
    pub rx: broadcast::Receiver<HubMessage>,
}

pub(crate) struct Shared {
    db: Database,
    snapshot_path: PathBuf,
    // A std mutex: it is never held across an await, only while copying events.
    hub: Mutex<WatchHub>,
}

/// The state machine handed to openraft; clones share one database.
#[derive(Clone)]
pub struct StateMachine {
    pub(crate) shared: Arc<Shared>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotPayload {
    revision: u64,
    compacted: u64,
    kvs: Vec<(String, StoredValue)>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    rmp_serde::to_vec_named(v).map_err(io_err)
}

fn decode<T: for<'de> Deserialize<'de>>(b: &[u8]) -> io::Result<T> {
    rmp_serde::from_slice(b).map_err(io_err)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(io_err)?
}

fn read_meta<T: for<'de> Deserialize<'de>>(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> io::Result<Option<T>> {
    match table.get(key).map_err(io_err)? {
        Some(v) => Ok(Some(decode(v.value())?)),
        None => Ok(None),
    }
}

fn get_kv(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
) -> io::Result<Option<KeyValue>> {
    match table.get(key).map_err(io_err)? {
        Some(v) => Ok(Some(decode::<StoredValue>(v.value())?.with_key(key))),
        None => Ok(None),
    }
}

fn range_kv(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    prefix: &str,
    start: &str,
    limit: usize,
) -> io::Result<Vec<KeyValue>> {
    let mut out = Vec::new();
    // Paging starts inside the prefix; a start before it means the whole prefix.
    let start = start.max(prefix);
    let iter = match prefix_end(prefix) {
        Some(end) if start < end.as_str() => table.range::<&str>(start..end.as_str()),
        Some(_) => return Ok(out),
        None => table.range::<&str>(start..),
    }
    .map_err(io_err)?;
    for item in iter {
        let (k, v) = item.map_err(io_err)?;
        out.push(decode::<StoredValue>(v.value())?.with_key(k.value()));
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Applies one transaction inside an open write transaction. Bumps `revision` only when the
/// transaction changed something, like etcd.
fn apply_txn(
    txn: &WriteTransaction,
    revision: &mut u64,
    req: &TxnRequest,
    events: &mut Vec<Event>,
) -> io::Result<TxnResponse> {
    let mut table = txn.open_table(KV).map_err(io_err)?;
    let mut succeeded = true;
    for cmp in &req.compare {
        if !cmp.holds(get_kv(&table, cmp.key())?.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded {
        &req.success
    } else {
        &req.failure
    };
    let rev = *revision + 1;
    let first_event = events.len();
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match op {
            Op::Put { key, value } => {
                let prev = get_kv(&table, key)?;
                let stored = StoredValue {
                    value: value.clone(),
                    create_revision: prev.as_ref().map(|p| p.create_revision).unwrap_or(rev),
                    mod_revision: rev,
                    version: prev.as_ref().map(|p| p.version + 1).unwrap_or(1),
                };
                table
                    .insert(key.as_str(), encode(&stored)?.as_slice())
                    .map_err(io_err)?;
                events.push(Event {
                    kind: EventKind::Put,
                    kv: stored.with_key(key),
                    prev: prev.clone(),
                });
                results.push(OpResult::Put { prev });
            }
            Op::Delete { key } => {
                let mut deleted = Vec::new();
                if let Some(prev) = get_kv(&table, key)? {
                    table.remove(key.as_str()).map_err(io_err)?;
                    deleted.push(prev);
                }
                push_deletes(events, &deleted, rev);
                results.push(OpResult::Delete { deleted });
            }
            Op::DeletePrefix { prefix } => {
                let deleted = range_kv(&table, prefix, prefix, usize::MAX)?;
                for kv in &deleted {
                    table.remove(kv.key.as_str()).map_err(io_err)?;
                }
                push_deletes(events, &deleted, rev);
                results.push(OpResult::Delete { deleted });
            }
            Op::Get { key } => results.push(OpResult::Get {
                kv: get_kv(&table, key)?,
            }),
        }
    }
    if events.len() > first_event {
        *revision = rev;
    }
    Ok(TxnResponse {
        succeeded,
        revision: *revision,
        results,
    })
}

fn push_deletes(events: &mut Vec<Event>, deleted: &[KeyValue], rev: u64) {
    for prev in deleted {
        let mut kv = prev.clone();
        kv.mod_revision = rev;
        events.push(Event {
            kind: EventKind::Delete,
            kv,
            prev: None,
        });
    }
}

struct Applied {
    results: Vec<CommandResult>,
    events: Vec<Event>,
    revision: u64,
    compacted: Option<u64>,
}

impl StateMachine {
    pub fn open(
        dir: &Path,
        history: HistoryLimits,
        cache_bytes: usize,
    ) -> io::Result<StateMachine> {
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(dir.join("state.redb"))
            .map_err(io_err)?;
        let txn = db.begin_write().map_err(io_err)?;
        txn.open_table(KV).map_err(io_err)?;
        txn.open_table(META).map_err(io_err)?;
        txn.commit().map_err(io_err)?;
        let revision = {
            let txn = db.begin_read().map_err(io_err)?;
            let meta = txn.open_table(META).map_err(io_err)?;
            read_meta::<u64>(&meta, KEY_REVISION)?.unwrap_or(0)
        };
        Ok(StateMachine {
            shared: Arc::new(Shared {
                db,
                snapshot_path: dir.join("snapshot.bin"),
                hub: Mutex::new(WatchHub::new(history, revision)),
            }),
        })
    }

    /// The revision this replica has applied.
    pub fn revision(&self) -> u64 {
        self.hub().revision
    }

    /// The oldest revision a watch may start from (exclusive floor + 1).
    pub fn watch_floor(&self) -> u64 {
        self.hub().floor
    }

    fn hub(&self) -> std::sync::MutexGuard<'_, WatchHub> {
        // A poisoned hub only means a panic elsewhere while copying events; the data is intact.
        self.shared
            .hub
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forces everything applied so far to disk.
    pub(crate) async fn flush(&self) -> io::Result<()> {
        let shared = self.shared.clone();
        blocking(move || {
            let mut txn = shared.db.begin_write().map_err(io_err)?;
            txn.set_durability(Durability::Immediate).map_err(io_err)?;
            txn.commit().map_err(io_err)
        })
        .await
    }

    /// Runs `f` on one consistent read snapshot of the key table; returns its result and the
    /// revision of that snapshot.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&'static str, &'static [u8]>) -> io::Result<T>
        + Send
        + 'static,
    ) -> Result<(T, u64), StoreError> {
        let shared = self.shared.clone();
        Ok(blocking(move || {
            let txn = shared.db.begin_read().map_err(io_err)?;
            let kv = txn.open_table(KV).map_err(io_err)?;
            let meta = txn.open_table(META).map_err(io_err)?;
            let revision = read_meta::<u64>(&meta, KEY_REVISION)?.unwrap_or(0);
            Ok((f(&kv)?, revision))
        })
        .await?)
    }

    pub(crate) async fn get(&self, key: &str) -> Result<(Option<KeyValue>, u64), StoreError> {
        let key = key.to_owned();
        self.read(move |kv| get_kv(kv, &key)).await
    }

    pub(crate) async fn range(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, u64), StoreError> {
        let prefix = prefix.to_owned();
        let start = start.to_owned();
        self.read(move |kv| range_kv(kv, &prefix, &start, limit))
            .await
    }

    /// Registers a watcher from `from_revision` (inclusive; 0 = from the next change).
    pub(crate) fn watch_start(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<WatchStart, StoreError> {
        let hub = self.hub();
        let from = if from_revision == 0 {
            hub.revision + 1
        } else {
            from_revision
        };
        if from <= hub.floor {
            return Err(StoreError::Expired {
                requested: from,
                oldest: hub.floor + 1,
            });
        }
        let backlog = hub
            .history
            .iter()
            .filter(|e| e.revision() >= from && e.kv.key.starts_with(prefix))
            .cloned()
            .collect();
        // Subscribing under the same lock as the backlog copy leaves no gap between them.
        let rx = hub.tx.subscribe();
        Ok(WatchStart { from, backlog, rx })
    }

    fn apply_batch(shared: &Shared, entries: &[crate::types::Entry]) -> io::Result<Applied> {
        let mut txn = shared.db.begin_write().map_err(io_err)?;
        txn.set_durability(Durability::None).map_err(io_err)?;
        let mut results = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        let mut compacted = None;
        let (mut revision, mut membership): (u64, Option<StoredMembership>) = {
            let meta = txn.open_table(META).map_err(io_err)?;
            (read_meta(&meta, KEY_REVISION)?.unwrap_or(0), None)
        };
        let mut applied = None;
        for entry in entries {
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(Command::Txn(req)) => {
                    CommandResult::Txn(apply_txn(&txn, &mut revision, req, &mut events)?)
                }
                EntryPayload::Normal(Command::Compact { revision: r }) => {
                    let r = (*r).min(revision);
                    compacted = Some(r);
                    CommandResult::Compacted { revision: r }
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    CommandResult::None
                }
            };
            applied = Some(entry.log_id);
            results.push(result);
        }
        {
            let mut meta = txn.open_table(META).map_err(io_err)?;
            meta.insert(KEY_APPLIED, encode(&applied)?.as_slice())
                .map_err(io_err)?;
            meta.insert(KEY_REVISION, encode(&revision)?.as_slice())
                .map_err(io_err)?;
            if let Some(m) = &membership {
                meta.insert(KEY_MEMBERSHIP, encode(m)?.as_slice())
                    .map_err(io_err)?;
            }
            if let Some(c) = compacted {
                meta.insert(KEY_COMPACTED, encode(&c)?.as_slice())
                    .map_err(io_err)?;
            }
        }
        txn.commit().map_err(io_err)?;
        Ok(Applied {
            results,
            events,
            revision,
            compacted,
        })
    }

    async fn read_snapshot_file(&self) -> io::Result<Option<SnapshotFile>> {
        let path = self.shared.snapshot_path.clone();
        blocking(move || match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(decode(&bytes)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        })
        .await
    }
}

/// Writes a file atomically: temp file, fsync, rename, fsync of the directory.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        // Everything the snapshot covers must be on disk before openraft may purge the log.
        self.flush().await?;
        let shared = self.shared.clone();
        let file = blocking(move || {
            let txn = shared.db.begin_read().map_err(io_err)?;
            let meta_table = txn.open_table(META).map_err(io_err)?;
            let kv = txn.open_table(KV).map_err(io_err)?;
            let applied: Option<LogId> =
                read_meta::<Option<LogId>>(&meta_table, KEY_APPLIED)?.flatten();
            let membership: StoredMembership =
                read_meta(&meta_table, KEY_MEMBERSHIP)?.unwrap_or_default();
            let payload = SnapshotPayload {
                revision: read_meta(&meta_table, KEY_REVISION)?.unwrap_or(0),
                compacted: read_meta(&meta_table, KEY_COMPACTED)?.unwrap_or(0),
                kvs: {
                    let mut kvs = Vec::new();
                    for item in kv.iter().map_err(io_err)? {
                        let (k, v) = item.map_err(io_err)?;
                        kvs.push((k.value().to_owned(), decode::<StoredValue>(v.value())?));
                    }
                    kvs
                },
            };
            let file = SnapshotFile {
                meta: SnapshotMeta {
                    last_log_id: applied,
                    last_membership: membership,
                },
                data: encode(&payload)?,
            };
            write_atomic(&shared.snapshot_path, &encode(&file)?)?;
            Ok(file)
        })
        .await?;
        Ok(Snapshot {
            meta: file.meta,
            snapshot: file.data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let shared = self.shared.clone();
        blocking(move || {
            let txn = shared.db.begin_read().map_err(io_err)?;
            let meta = txn.open_table(META).map_err(io_err)?;
            let applied = read_meta::<Option<LogId>>(&meta, KEY_APPLIED)?.flatten();
            let membership = read_meta(&meta, KEY_MEMBERSHIP)?.unwrap_or_default();
            Ok((applied, membership))
        })
        .await
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Applying is a non-durable redb commit: microseconds for a small batch, far less than
        // a round trip through the blocking pool (two thread wake-ups), which dominated the
        // latency of a lone write. Large batches still go to the blocking pool.
        let applied = if batch.len() <= INLINE_APPLY_MAX {
            StateMachine::apply_batch(&self.shared, &batch)?
        } else {
            let shared = self.shared.clone();
            blocking(move || StateMachine::apply_batch(&shared, &batch)).await?
        };
        {
            let mut hub = self.hub();
            if let Some(c) = applied.compacted {
                hub.compact(c);
            }
            hub.publish(applied.events, applied.revision);
        }
        for (responder, result) in responders.into_iter().zip(applied.results) {
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let payload: SnapshotPayload = decode(&snapshot)?;
        let file = SnapshotFile {
            meta: meta.clone(),
            data: snapshot,
        };
        let shared = self.shared.clone();
        let revision = payload.revision;
        blocking(move || {
            let mut txn = shared.db.begin_write().map_err(io_err)?;
            txn.set_durability(Durability::Immediate).map_err(io_err)?;
            {
                let mut kv = txn.open_table(KV).map_err(io_err)?;
                kv.retain(|_, _| false).map_err(io_err)?;
                for (k, v) in &payload.kvs {
                    kv.insert(k.as_str(), encode(v)?.as_slice())
                        .map_err(io_err)?;
                }
                let mut m = txn.open_table(META).map_err(io_err)?;
                m.insert(KEY_APPLIED, encode(&file.meta.last_log_id)?.as_slice())
                    .map_err(io_err)?;
                m.insert(
                    KEY_MEMBERSHIP,
                    encode(&file.meta.last_membership)?.as_slice(),
                )
                .map_err(io_err)?;
                m.insert(KEY_REVISION, encode(&payload.revision)?.as_slice())
                    .map_err(io_err)?;
                m.insert(KEY_COMPACTED, encode(&payload.compacted)?.as_slice())
                    .map_err(io_err)?;
            }
            txn.commit().map_err(io_err)?;
            write_atomic(&shared.snapshot_path, &encode(&file)?)
        })
        .await?;
        self.hub().reset(revision);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.read_snapshot_file().await?.map(|f| Snapshot {
            meta: f.meta,
            snapshot: f.data,
        }))
    }
}
