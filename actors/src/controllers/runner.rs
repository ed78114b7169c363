//! The loop every controller runs on every node: level-triggered reconciles of the objects in
//! the shards this node owns. Keys (`namespace/name`) are queued by watch events on the kind
//! and on related kinds (a pod's change queues its owner), by a periodic resync of everything
//! owned, and when shard ownership changes; each key is reconciled from a fresh read, and
//! requeued with backoff when it fails.

use flotilla_api::At;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use flotilla_api::ApiError;
use flotilla_api::internal::Fence;
use flotilla_consensus::{EventKind, Read, Store};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::feed::{Feed, Message};
use super::shards::Shards;

/// How often every owned object is reconciled even without events.
const RESYNC: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What a reconciler works with.
pub struct Ctx {
    pub node: String,
    pub store: Store,
    pub shards: Shards,
    /// The registry's changes, parsed once for every controller on this node.
    pub feed: Feed,
}

impl Ctx {
    /// The fence for writes about `key`'s object, if its shard is owned here.
    pub fn fence(&self, key: &str) -> Option<Fence> {
        self.shards.fence_for(key).map(|c| Fence {
            compare: vec![c],
            also: Vec::new(),
        })
    }

    /// The stored objects under `prefix`, with their resourceVersions set.
    pub async fn list(&self, prefix: &str) -> Result<Vec<Value>, ApiError> {
        Ok(self
            .store
            .range(prefix, usize::MAX, Read::Linearizable)
            .await?
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let mut v: Value = serde_json::from_slice(&kv.value).ok()?;
                v["metadata"]["resourceVersion"] = Value::String(kv.mod_revision.to_string());
                Some(v)
            })
            .collect())
    }

    /// One stored object, with its resourceVersion.
    pub async fn get(&self, key: &str) -> Result<Option<Value>, ApiError> {
        Ok(self
            .store
            .get(key, Read::Linearizable)
            .await?
            .kv
            .and_then(|kv| {
                let mut v: Value = serde_json::from_slice(&kv.value).ok()?;
                v["metadata"]["resourceVersion"] = Value::String(kv.mod_revision.to_string());
                Some(v)
            }))
    }
}

/// A level-triggered controller of one kind.
pub trait Reconciler: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// Where the kind's objects live (`/registry/apps/replicasets/`).
    fn prefix(&self) -> &'static str;
    /// Other kinds whose changes concern objects of this kind.
    fn related(&self) -> &'static [&'static str] {
        &[]
    }
    /// The keys of this kind a related object's change concerns (its owner, say);
    /// `namespace/*` stands for every object of the kind in the namespace.
    fn keys_for(&self, _related: &Value) -> Vec<String> {
        Vec::new()
    }
    /// Changes outside the store that concern every object (gossip's view of the nodes, say):
    /// each change reconciles everything owned at once.
    fn kicks(&self) -> Option<watch::Receiver<u64>> {
        None
    }
    /// Brings one object's world in line with it; `Some(d)`: look again after `d`.
    fn reconcile<'a>(
        &'a self,
        ctx: &'a Ctx,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Duration>, ApiError>>;
}

/// The key of an object: `namespace/name`, or `name` when cluster-scoped.
pub fn key_of(obj: &Value) -> String {
    let name = obj
        .at("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    match obj.at("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_owned(),
    }
}

/// The controller-owner reference of an object, if it has one of `kind`.
pub fn controller_of<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj.at("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|o| {
            o.get("controller").and_then(Value::as_bool) == Some(true)
                && o.get("kind").and_then(Value::as_str) == Some(kind)
        })
}

enum Signal {
    Key(String),
    /// The watch fell behind or restarted: reconcile everything owned.
    Resync,
}

/// Starts `reconciler` on this node; it stops with `shutdown`.
pub fn start(ctx: Arc<Ctx>, reconciler: Arc<dyn Reconciler>, shutdown: watch::Receiver<bool>) {
    let (tx, rx) = mpsc::channel(4096);
    for prefix in std::iter::once(reconciler.prefix()).chain(reconciler.related().iter().copied()) {
        tokio::spawn(watch_prefix(
            ctx.clone(),
            reconciler.clone(),
            prefix,
            tx.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(run(ctx, reconciler, rx, shutdown));
}

async fn watch_prefix(
    ctx: Arc<Ctx>,
    reconciler: Arc<dyn Reconciler>,
    prefix: &'static str,
    tx: mpsc::Sender<Signal>,
    mut shutdown: watch::Receiver<bool>,
) {
    let own = prefix == reconciler.prefix();
    // Related objects' keys → the keys of this kind they concerned when last seen.
    let mut concerned: HashMap<String, Vec<String>> = HashMap::new();
    let mut feed = ctx.feed.subscribe();
    // Whatever happened before the subscription is covered by a resync.
    if tx.send(Signal::Resync).await.is_err() {
        return;
    }
    loop {
        let message = tokio::select! {
            m = feed.next() => m,
            _ = shutdown.changed() => return,
        };
        let changes = match message {
            Some(Message::Changes(changes)) => changes,
            Some(Message::Restart) => {
                concerned.clear();
                if tx.send(Signal::Resync).await.is_err() {
                    return;
                }
                continue;
            }
            None => return,
        };
        for change in changes.iter().filter(|c| c.key.starts_with(prefix)) {
            let Some(obj) = change.obj.as_deref() else {
                continue;
            };
            let mut keys = if own {
                vec![key_of(obj)]
            } else {
                reconciler.keys_for(obj)
            };
            // A change of owner concerns the old one too: what the object concerned before
            // is remembered (the feed does not parse old values).
            if !own {
                let before = if change.kind == EventKind::Delete || keys.is_empty() {
                    concerned.remove(&change.key)
                } else {
                    concerned.insert(change.key.clone(), keys.clone())
                };
                keys.extend(
                    before
                        .into_iter()
                        .flatten()
                        .filter(|k| !keys.contains(k))
                        .collect::<Vec<_>>(),
                );
            }
            for key in keys {
                if tx.send(Signal::Key(key)).await.is_err() {
                    return;
                }
            }
        }
    }
}

async fn run(
    ctx: Arc<Ctx>,
    reconciler: Arc<dyn Reconciler>,
    mut rx: mpsc::Receiver<Signal>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut due: BTreeMap<String, Instant> = BTreeMap::new();
    let mut backoff: HashMap<String, Duration> = HashMap::new();
    let mut shards = ctx.shards.clone();
    let mut kicks = reconciler.kicks();
    let mut next_resync = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_resync {
            next_resync = now + RESYNC;
            resync(&ctx, reconciler.prefix(), &mut due).await;
        }
        // Everything due now, in one sweep.
        let ready: Vec<String> = due
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ready {
            due.remove(&key);
            // `namespace/*` fans out to the namespace's objects: every node takes it, and
            // reconciles the ones it owns.
            if !key.ends_with("/*") && ctx.shards.fence_for(&key).is_none() {
                continue;
            }
            match reconciler.reconcile(&ctx, &key).await {
                Ok(again) => {
                    backoff.remove(&key);
                    if let Some(d) = again {
                        schedule(&mut due, key, Instant::now() + d);
                    }
                }
                Err(e) => {
                    let b = backoff
                        .get(&key)
                        .map_or(Duration::from_millis(500), |b| (*b * 2).min(MAX_BACKOFF));
                    tracing::debug!(controller = reconciler.name(), %key, error = %e.message(), retry_in = ?b, "reconcile failed");
                    backoff.insert(key.clone(), b);
                    schedule(&mut due, key, Instant::now() + b);
                }
            }
        }
        let next = due
            .values()
            .min()
            .copied()
            .unwrap_or(next_resync)
            .min(next_resync);
        let kicked = async {
            // A closed channel never kicks again.
            let gone = match kicks.as_mut() {
                Some(k) => k.changed().await.is_err(),
                None => true,
            };
            if gone {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            s = rx.recv() => match s {
                Some(Signal::Key(k)) => schedule(&mut due, k, Instant::now()),
                Some(Signal::Resync) => next_resync = Instant::now(),
                None => return,
            },
            _ = shards.changed() => next_resync = Instant::now(),
            _ = kicked => next_resync = Instant::now(),
            _ = tokio::time::sleep_until(next) => {}
            _ = shutdown.changed() => return,
        }
        // Coalesce a burst of events into one sweep.
        while let Ok(s) = rx.try_recv() {
            match s {
                Signal::Key(k) => schedule(&mut due, k, Instant::now()),
                Signal::Resync => next_resync = Instant::now(),
            }
        }
    }
}

fn schedule(due: &mut BTreeMap<String, Instant>, key: String, at: Instant) {
    let slot = due.entry(key).or_insert(at);
    if at < *slot {
        *slot = at;
    }
}

async fn resync(ctx: &Ctx, prefix: &str, due: &mut BTreeMap<String, Instant>) {
    let Ok(range) = ctx
        .store
        .range(prefix, usize::MAX, Read::Linearizable)
        .await
    else {
        return;
    };
    let now = Instant::now();
    for kv in range.kvs {
        let key = kv.key[prefix.len()..].to_owned();
        if ctx.shards.fence_for(&key).is_some() {
            schedule(due, key, now);
        }
    }
}
