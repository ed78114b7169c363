//! The garbage collector, generic over every stored kind (events aside: they neither own nor
//! are owned). A sweep reads all objects and acts on those in the shards this node owns:
//!
//! - a dependent whose owners are all gone (missing, or the name now has another uid) is
//!   deleted (background propagation); one whose owner is being deleted in the foreground is
//!   deleted too (in the foreground itself, unless it is a pod, so deletion cascades down);
//!   references to owners that are gone while others remain are dropped, as are references to
//!   owners being deleted with `orphan`;
//! - an owner being deleted with the `foregroundDeletion` finalizer loses it once no dependent
//!   that blocks its deletion (`blockOwnerDeletion`) is left; one with `orphan` loses it once
//!   no dependent refers to it. Removing the last finalizer deletes the object.
//!
//! Dependent work is sharded by the dependent's `namespace/name`, owner work by the owner's,
//! and every write is fenced by that shard's lease. An owner that looks missing is looked up
//! again, linearizably, before anything is deleted for it (the sweep reads kinds one after
//! the other, so an owner made after its kind was read would otherwise look gone).
//!
//! The collector keeps a small index of every stored object (uid, owner references, whether
//! it is being deleted and how), listed once and then kept up to date from the node's
//! registry feed, like kube-controller-manager's dependency graph. Sweeps run every
//! [`SWEEP_EVERY`], when shard ownership changes, and soon after a change that matters (an
//! owner deleted; an owner marked with a GC finalizer; a waiting owner's dependent deleted or
//! released). A sweep works out from the index what may need doing, then reads each such
//! object afresh (linearizably) and decides on what it reads: level-triggered, and no sweep
//! re-reads or re-parses the store (at 30,000 pods that cost 13% of the cluster's CPU).

use flotilla_api::At;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::internal;
use flotilla_api::{ApiError, FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Propagation, RESOURCES};
use flotilla_consensus::{EventKind, Read};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::common::{is_deleting, str_at};
use super::feed::{Change, Message};
use super::runner::{Ctx, key_of};

const MANAGER: &str = "garbage-collector";
/// How often a sweep runs even when nothing was noticed.
const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// A burst of changes is answered by one sweep after this pause.
const SETTLE: Duration = Duration::from_millis(300);
/// The most writes one sweep makes; the rest come with the next one, right after.
const WRITES_PER_SWEEP: usize = 500;

/// What the watch looks out for, as of the last sweep: the uids objects name as owners, and
/// the uids of owners waiting for their dependents (GC finalizers).
#[derive(Default)]
struct Watched {
    owners: HashSet<String>,
    waiting: HashSet<String>,
}

/// Starts the garbage collector on this node; it stops with `shutdown`.
pub fn start(ctx: Arc<Ctx>, shutdown: watch::Receiver<bool>) {
    let (tx, rx) = mpsc::channel(1);
    let watched = Arc::new(Mutex::new(Watched::default()));
    let index = Arc::new(Mutex::new(Index::default()));
    tokio::spawn(follow(
        ctx.clone(),
        index.clone(),
        watched.clone(),
        tx,
        shutdown.clone(),
    ));
    tokio::spawn(run(ctx, index, watched, rx, shutdown));
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj.at("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj.at("/metadata/finalizers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn waits_for_dependents(obj: &Value) -> bool {
    is_deleting(obj)
        && finalizers(obj)
            .iter()
            .any(|f| *f == FOREGROUND_FINALIZER || *f == ORPHAN_FINALIZER)
}

/// Whether a change calls for a sweep now rather than at the next period; `prev` is what the
/// index knew of the object before it.
fn concerns_gc(kind: EventKind, obj: &Value, prev: Option<&Known>, watched: &Watched) -> bool {
    let uid = str_at(obj, "/metadata/uid");
    match kind {
        EventKind::Delete => {
            watched.owners.contains(uid) || owner_uids(obj).any(|u| watched.waiting.contains(u))
        }
        EventKind::Put => {
            let now = finalizers(obj);
            let (orphaning, foreground) = (
                now.contains(&ORPHAN_FINALIZER),
                now.contains(&FOREGROUND_FINALIZER),
            );
            let newly_waiting = waits_for_dependents(obj)
                && prev.is_none_or(|p| (p.orphaning, p.foreground) != (orphaning, foreground));
            let released = prev.is_some_and(|p| {
                obj.at("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .map_or(&[][..], Vec::as_slice)
                    != p.refs.as_slice()
                    && p.refs
                        .iter()
                        .any(|r| watched.waiting.contains(str_at(r, "/uid")))
            });
            newly_waiting || released
        }
    }
}

/// What an owner reference points at, as far as the GC is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnerState {
    /// Exists and is not waiting for its dependents (or is of a kind not served here, which
    /// cannot be checked and so is kept).
    Alive,
    Gone,
    Foreground,
    Orphaning,
}

fn state_of(owner: &Value) -> OwnerState {
    if !is_deleting(owner) {
        return OwnerState::Alive;
    }
    let f = finalizers(owner);
    if f.contains(&ORPHAN_FINALIZER) {
        OwnerState::Orphaning
    } else if f.contains(&FOREGROUND_FINALIZER) {
        OwnerState::Foreground
    } else {
        OwnerState::Alive
    }
}

/// The served resource an owner reference names (any version of its group).
fn owner_resource(reference: &Value) -> Option<&'static flotilla_api::Resource> {
    let api_version = str_at(reference, "/apiVersion");
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    let kind = str_at(reference, "/kind");
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// What to do about one dependent, from the states of its owners (in reference order).
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Keep,
    /// Every owner is gone or being deleted in the foreground.
    Delete {
        foreground: bool,
    },
    /// Drop the references at these positions (owners gone, orphaning, or waiting in the
    /// foreground while another owner lives on).
    Release(Vec<usize>),
}

fn verdict(states: &[OwnerState]) -> Verdict {
    if states.is_empty() {
        return Verdict::Keep;
    }
    let alive = states.contains(&OwnerState::Alive);
    let orphaning = states.contains(&OwnerState::Orphaning);
    if !alive && !orphaning {
        return Verdict::Delete {
            foreground: states.contains(&OwnerState::Foreground),
        };
    }
    let drop: Vec<usize> = states
        .iter()
        .enumerate()
        .filter(|(_, s)| **s != OwnerState::Alive)
        .map(|(i, _)| i)
        .collect();
    if drop.is_empty() {
        Verdict::Keep
    } else {
        Verdict::Release(drop)
    }
}

/// Lists every object into the index, then applies the feed's changes to it (and wakes the
/// sweeper for those that matter); lists again whenever the feed restarts.
async fn follow(
    ctx: Arc<Ctx>,
    index: Arc<Mutex<Index>>,
    watched: Arc<Mutex<Watched>>,
    tx: mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    // Subscribed before listing: every change after the list's revision arrives here.
    let mut feed = ctx.feed.subscribe();
    let mut listed_at: Option<u64> = None;
    loop {
        if listed_at.is_none() {
            match list(&ctx).await {
                Ok((revision, objects)) => {
                    let mut ix = index.lock().unwrap_or_else(|e| e.into_inner());
                    ix.objects = objects;
                    ix.ready = true;
                    listed_at = Some(revision);
                    // Anything may have happened before the list.
                    let _ = tx.try_send(());
                }
                Err(e) => {
                    tracing::debug!(error = %e.message(), "garbage collector cannot list");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
        let message = tokio::select! {
            m = feed.next() => m,
            _ = shutdown.changed() => return,
        };
        match message {
            Some(Message::Changes(changes)) => {
                let from = listed_at.unwrap_or(0);
                let wake = {
                    // No await while the locks are held.
                    let mut ix = index.lock().unwrap_or_else(|e| e.into_inner());
                    let w = watched.lock().unwrap_or_else(|e| e.into_inner());
                    let mut wake = false;
                    for c in changes.iter().filter(|c| c.revision > from) {
                        wake |= c.obj.as_deref().is_some_and(|obj| {
                            concerns_gc(c.kind, obj, ix.objects.get(&c.key), &w)
                        });
                        ix.apply(c);
                    }
                    wake
                };
                if wake {
                    let _ = tx.try_send(());
                }
            }
            Some(Message::Restart) => {
                index.lock().unwrap_or_else(|e| e.into_inner()).ready = false;
                listed_at = None;
            }
            None => return,
        }
    }
}

async fn run(
    ctx: Arc<Ctx>,
    index: Arc<Mutex<Index>>,
    watched: Arc<Mutex<Watched>>,
    mut rx: mpsc::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut shards = ctx.shards.clone();
    loop {
        let mut again = false;
        if !ctx.shards.owned().is_empty() {
            match sweep(&ctx, &index).await {
                Ok(Some((w, more))) => {
                    *watched.lock().unwrap_or_else(|e| e.into_inner()) = w;
                    again = more;
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(error = %e.message(), "garbage collection sweep failed"),
            }
        }
        if !again {
            tokio::select! {
                r = rx.recv() => if r.is_none() { return },
                _ = shards.changed() => {}
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(SETTLE) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One stored object, read afresh for an action.
struct Obj {
    resource: &'static flotilla_api::Resource,
    obj: Value,
}

impl Obj {
    fn namespace(&self) -> Option<&str> {
        Some(str_at(&self.obj, "/metadata/namespace")).filter(|n| !n.is_empty())
    }
    fn name(&self) -> &str {
        str_at(&self.obj, "/metadata/name")
    }
    fn uid(&self) -> &str {
        str_at(&self.obj, "/metadata/uid")
    }
    fn gvr(&self) -> (&'static str, &'static str, &'static str) {
        (
            self.resource.group,
            self.resource.version,
            self.resource.plural,
        )
    }
}

/// What the index keeps of one object: who owns it and whether it is being deleted, not
/// the object itself.
struct Known {
    resource: &'static flotilla_api::Resource,
    /// `namespace/name` (or `name`): what its shard is picked by.
    shard_key: String,
    uid: String,
    state: OwnerState,
    /// Its ownerReferences, as stored.
    refs: Vec<Value>,
    /// Being deleted, waiting for its dependents: with the orphan finalizer, the
    /// foreground one (either or both), or neither.
    orphaning: bool,
    foreground: bool,
}

impl Known {
    fn of(resource: &'static flotilla_api::Resource, obj: &Value) -> Known {
        Known {
            resource,
            shard_key: key_of(obj),
            uid: str_at(obj, "/metadata/uid").to_owned(),
            state: state_of(obj),
            refs: obj
                .at("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            orphaning: waits_for_dependents(obj) && finalizers(obj).contains(&ORPHAN_FINALIZER),
            foreground: waits_for_dependents(obj)
                && finalizers(obj).contains(&FOREGROUND_FINALIZER),
        }
    }
}

/// Every stored object (events aside), by store key.
#[derive(Default)]
struct Index {
    objects: HashMap<String, Known>,
    /// Listed and following the feed (not while listing again after a restart).
    ready: bool,
}

/// The served resource (one per stored prefix) a store key belongs to; none for events.
fn resource_of_key(key: &str) -> Option<&'static flotilla_api::Resource> {
    static PREFIXES: std::sync::OnceLock<Vec<(String, &'static flotilla_api::Resource)>> =
        std::sync::OnceLock::new();
    let prefixes = PREFIXES.get_or_init(|| {
        let mut seen = HashSet::new();
        RESOURCES
            .iter()
            .filter(|r| r.plural != "events")
            .filter(|&r| seen.insert(r.key_prefix()))
            .map(|r| (r.key_prefix(), r))
            .collect()
    });
    prefixes
        .iter()
        .find(|(p, _)| key.starts_with(p.as_str()))
        .map(|(_, r)| *r)
}

impl Index {
    fn apply(&mut self, c: &Change) {
        let Some(resource) = resource_of_key(&c.key) else {
            return;
        };
        match (c.kind, c.obj.as_deref()) {
            (EventKind::Put, Some(obj)) => {
                self.objects.insert(c.key.clone(), Known::of(resource, obj));
            }
            _ => {
                self.objects.remove(&c.key);
            }
        }
    }
}

/// Every stored object of every kind (events aside), for the index, and the revision the
/// index follows the feed from (that of the first read: later reads are at least as
/// fresh, and replaying a change the list already had is harmless).
async fn list(ctx: &Ctx) -> Result<(u64, HashMap<String, Known>), ApiError> {
    let mut seen = HashSet::new();
    let mut out = HashMap::new();
    let mut first = None;
    for r in RESOURCES {
        let prefix = r.key_prefix();
        if r.plural == "events" || !seen.insert(prefix.clone()) {
            continue;
        }
        let read = if first.is_none() {
            Read::Linearizable
        } else {
            Read::Local
        };
        let range = ctx.store.range(&prefix, usize::MAX, read).await?;
        first.get_or_insert(range.revision);
        for (i, kv) in range.kvs.into_iter().enumerate() {
            // Parsing everything takes a while: let the node's other tasks (Raft) in.
            if i % 512 == 511 {
                tokio::task::yield_now().await;
            }
            let Ok(obj) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            out.insert(kv.key, Known::of(r, &obj));
        }
    }
    Ok((first.unwrap_or(0), out))
}

/// One object the index says may need work, to be read afresh.
struct Todo {
    resource: &'static flotilla_api::Resource,
    /// The store key, and the uid it had.
    key: String,
    uid: String,
    dependent: bool,
    /// An owner that may be done waiting for its dependents, and their references to it.
    finishing: bool,
    deps: Vec<Value>,
}

impl Todo {
    /// The object as stored now; `None` if it is gone or is now another object (new uid).
    async fn fresh(&self, ctx: &Ctx) -> Result<Option<Obj>, ApiError> {
        Ok(ctx.get(&self.key).await?.and_then(|obj| {
            (str_at(&obj, "/metadata/uid") == self.uid).then_some(Obj {
                resource: self.resource,
                obj,
            })
        }))
    }
}

/// One sweep; returns what the watch should look out for, and whether work was left over
/// (`None`: the index is being listed again).
async fn sweep(ctx: &Ctx, index: &Mutex<Index>) -> Result<Option<(Watched, bool)>, ApiError> {
    // From the index, under its lock (no await): who may need collecting, which owners may
    // be done waiting, and the states of the owners they name.
    let (watched, todo, owner_states) = {
        let ix = index.lock().unwrap_or_else(|e| e.into_inner());
        if !ix.ready {
            return Ok(None);
        }
        let by_uid: HashMap<&str, &Known> =
            ix.objects.values().map(|k| (k.uid.as_str(), k)).collect();
        let mut watched = Watched::default();
        let mut dependents: HashMap<&str, Vec<&Value>> = HashMap::new();
        for k in ix.objects.values() {
            for reference in &k.refs {
                let uid = str_at(reference, "/uid");
                watched.owners.insert(uid.to_owned());
                dependents.entry(uid).or_default().push(reference);
            }
            if k.orphaning || k.foreground {
                watched.waiting.insert(k.uid.clone());
            }
        }
        let state = |reference: &Value| match by_uid.get(str_at(reference, "/uid")) {
            Some(owner) => owner.state,
            // Not served here: cannot be checked, so kept.
            None if owner_resource(reference).is_none() => OwnerState::Alive,
            // Confirmed with a fresh read before anything is deleted for it.
            None => OwnerState::Gone,
        };
        let mut todo = Vec::new();
        let mut owner_states: HashMap<String, OwnerState> = HashMap::new();
        for (key, k) in &ix.objects {
            if ctx.fence(&k.shard_key).is_none() {
                continue;
            }
            let states: Vec<OwnerState> = k.refs.iter().map(state).collect();
            let dependent = verdict(&states) != Verdict::Keep;
            if dependent {
                for (reference, s) in k.refs.iter().zip(&states) {
                    if by_uid.contains_key(str_at(reference, "/uid")) {
                        owner_states.insert(str_at(reference, "/uid").to_owned(), *s);
                    }
                }
            }
            let deps: &[&Value] = dependents.get(k.uid.as_str()).map_or(&[], Vec::as_slice);
            // What `finish_owner` would remove, going by the index.
            let finishing = (k.orphaning && deps.is_empty())
                || (k.foreground
                    && !deps.iter().any(|r| {
                        r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
                    }));
            if dependent || finishing {
                todo.push(Todo {
                    resource: k.resource,
                    key: key.clone(),
                    uid: k.uid.clone(),
                    dependent,
                    finishing,
                    deps: if finishing {
                        deps.iter().map(|r| (*r).clone()).collect()
                    } else {
                        Vec::new()
                    },
                });
            }
        }
        (watched, todo, owner_states)
    };
    let mut writes = 0;
    for t in todo {
        if writes >= WRITES_PER_SWEEP {
            return Ok(Some((watched, true)));
        }
        let o = match t.fresh(ctx).await {
            Ok(Some(o)) => o,
            Ok(None) => continue,
            Err(e) if e.code() >= 500 => return Err(e),
            Err(_) => continue,
        };
        let key = t.key.as_str();
        // One object the API refuses to write (say, stored before a validation rule existed)
        // must not stop the collection of all the others.
        if t.dependent && o.obj.at("/metadata/ownerReferences").is_some() {
            match collect_dependent(ctx, &o, &owner_states).await {
                Ok(wrote) => writes += usize::from(wrote),
                Err(e) if e.code() >= 500 => return Err(e),
                // Changed or gone since it was read: the next sweep sees it as it is.
                Err(e) if matches!(e.code(), 404 | 409) => {}
                Err(e) => {
                    tracing::warn!(kind = o.resource.kind, %key, error = %e.message(), "cannot collect a dependent")
                }
            }
        }
        if t.finishing && waits_for_dependents(&o.obj) {
            match finish_owner(ctx, &o, &t.deps).await {
                Ok(wrote) => writes += usize::from(wrote),
                Err(e) if e.code() >= 500 => return Err(e),
                Err(e) if matches!(e.code(), 404 | 409) => {}
                Err(e) => {
                    tracing::warn!(kind = o.resource.kind, %key, error = %e.message(), "cannot finish an owner's deletion")
                }
            }
        }
    }
    Ok(Some((watched, false)))
}

/// Acts on one dependent; true if it wrote.
async fn collect_dependent(
    ctx: &Ctx,
    dep: &Obj,
    owners: &HashMap<String, OwnerState>,
) -> Result<bool, ApiError> {
    let refs: Vec<Value> = dep
        .obj
        .at("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut states = Vec::with_capacity(refs.len());
    for reference in &refs {
        let uid = str_at(reference, "/uid");
        let state = match owners.get(uid) {
            Some(state) => *state,
            None => match owner_resource(reference) {
                None => OwnerState::Alive,
                Some(r) => {
                    // Gone as of the sweep's read; make sure before acting on it.
                    let ns = if r.namespaced { dep.namespace() } else { None };
                    let key = r.key(ns, str_at(reference, "/name"));
                    match ctx.get(&key).await? {
                        Some(owner) if str_at(&owner, "/metadata/uid") == uid => state_of(&owner),
                        _ => OwnerState::Gone,
                    }
                }
            },
        };
        states.push(state);
    }
    let Some(fence) = ctx.fence(&key_of(&dep.obj)) else {
        return Ok(false);
    };
    match verdict(&states) {
        Verdict::Keep => Ok(false),
        Verdict::Delete { .. } if is_deleting(&dep.obj) => Ok(false),
        Verdict::Delete { foreground } => {
            // Pods are removed by their kubelet, which does not wait for finalizers.
            let policy = if foreground && dep.resource.plural != "pods" {
                Propagation::Foreground
            } else {
                Propagation::Background
            };
            tracing::info!(
                kind = dep.resource.kind,
                namespace = dep.namespace().unwrap_or(""),
                name = dep.name(),
                ?policy,
                "garbage collecting an object whose owners are gone"
            );
            internal::delete_propagating(
                &ctx.store,
                dep.gvr(),
                dep.namespace(),
                dep.name(),
                Some(dep.uid()),
                None,
                Some(policy),
                fence,
            )
            .await
        }
        // An update of an object being deleted without finalizers would delete it (that is
        // how the API finishes deletions): leave a terminating pod to its kubelet.
        Verdict::Release(_) if is_deleting(&dep.obj) && finalizers(&dep.obj).is_empty() => {
            Ok(false)
        }
        Verdict::Release(drop) => {
            let kept: Vec<Value> = refs
                .iter()
                .enumerate()
                .filter(|(i, _)| !drop.contains(i))
                .map(|(_, r)| r.clone())
                .collect();
            let mut updated = dep.obj.clone();
            if kept.is_empty() {
                if let Some(m) = updated["metadata"].as_object_mut() {
                    m.remove("ownerReferences");
                }
            } else {
                updated["metadata"]["ownerReferences"] = json!(kept);
            }
            Ok(internal::replace(
                &ctx.store,
                dep.gvr(),
                dep.namespace(),
                dep.name(),
                updated,
                false,
                MANAGER,
                fence,
            )
            .await?
            .is_some())
        }
    }
}

/// Removes an owner's GC finalizers once its dependents allow it; true if it wrote.
async fn finish_owner(ctx: &Ctx, owner: &Obj, deps: &[Value]) -> Result<bool, ApiError> {
    let f = finalizers(&owner.obj);
    let mut remove: Vec<&str> = Vec::new();
    if f.contains(&ORPHAN_FINALIZER) && deps.is_empty() {
        remove.push(ORPHAN_FINALIZER);
    }
    let blocking = deps
        .iter()
        .any(|r| r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true));
    if f.contains(&FOREGROUND_FINALIZER) && !blocking {
        remove.push(FOREGROUND_FINALIZER);
    }
    if remove.is_empty() {
        return Ok(false);
    }
    let Some(fence) = ctx.fence(&key_of(&owner.obj)) else {
        return Ok(false);
    };
    let kept: Vec<&str> = f.into_iter().filter(|x| !remove.contains(x)).collect();
    let mut updated = owner.obj.clone();
    updated["metadata"]["finalizers"] = json!(kept);
    tracing::info!(kind = owner.resource.kind, namespace = owner.namespace().unwrap_or(""), name = owner.name(), removed = ?remove, "dependents handled; removing finalizers");
    Ok(internal::replace(
        &ctx.store,
        owner.gvr(),
        owner.namespace(),
        owner.name(),
        updated,
        false,
        MANAGER,
        fence,
    )
    .await?
    .is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use OwnerState::*;

    #[test]
    fn verdicts_follow_the_owners() {
        assert_eq!(verdict(&[]), Verdict::Keep);
        assert_eq!(verdict(&[Alive]), Verdict::Keep);
        assert_eq!(verdict(&[Gone]), Verdict::Delete { foreground: false });
        assert_eq!(
            verdict(&[Gone, Foreground]),
            Verdict::Delete { foreground: true }
        );
        assert_eq!(verdict(&[Alive, Gone]), Verdict::Release(vec![1]));
        assert_eq!(verdict(&[Orphaning]), Verdict::Release(vec![0]));
        assert_eq!(
            verdict(&[Gone, Orphaning, Alive]),
            Verdict::Release(vec![0, 1])
        );
        assert_eq!(verdict(&[Foreground, Alive]), Verdict::Release(vec![0]));
    }

    #[test]
    fn owner_references_resolve_to_served_kinds() {
        let rs = owner_resource(&json!({"apiVersion": "apps/v1", "kind": "ReplicaSet"})).unwrap();
        assert_eq!(rs.plural, "replicasets");
        let rc =
            owner_resource(&json!({"apiVersion": "v1", "kind": "ReplicationController"})).unwrap();
        assert_eq!(rc.key_prefix(), "/registry/core/replicationcontrollers/");
        assert!(
            owner_resource(&json!({"apiVersion": "example.com/v1", "kind": "Widget"})).is_none()
        );
    }

    #[test]
    fn sweeps_wake_for_owner_deletions_and_waiting_owners() {
        let watched = Watched {
            owners: ["rs-uid".to_owned()].into(),
            waiting: ["dying-uid".to_owned()].into(),
        };
        // What the index knew of an object before its change.
        let known = |v: &Value| Known::of(resource_of_key("/registry/core/pods/ns/p").unwrap(), v);
        let rs = json!({"metadata": {"uid": "rs-uid"}});
        assert!(concerns_gc(EventKind::Delete, &rs, None, &watched));
        let pod = json!({"metadata": {"uid": "p", "ownerReferences": [{"uid": "other"}]}});
        assert!(!concerns_gc(EventKind::Delete, &pod, None, &watched));
        let waiting_pod =
            json!({"metadata": {"uid": "p", "ownerReferences": [{"uid": "dying-uid"}]}});
        assert!(concerns_gc(EventKind::Delete, &waiting_pod, None, &watched));
        // Released from a waiting owner.
        assert!(concerns_gc(
            EventKind::Put,
            &pod,
            Some(&known(&waiting_pod)),
            &watched
        ));
        // A status update of an unrelated object does not.
        assert!(!concerns_gc(
            EventKind::Put,
            &pod,
            Some(&known(&pod)),
            &watched
        ));
        let marked = json!({"metadata": {"uid": "x", "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["foregroundDeletion"]}});
        assert!(concerns_gc(
            EventKind::Put,
            &marked,
            Some(&known(&json!({"metadata": {"uid": "x"}}))),
            &watched
        ));
        assert!(!concerns_gc(
            EventKind::Put,
            &marked,
            Some(&known(&marked)),
            &watched
        ));
    }
}
