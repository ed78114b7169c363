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
//! Sweeps run every [`SWEEP_EVERY`], when shard ownership changes, and soon after a change
//! that matters (an owner deleted; an owner marked with a GC finalizer; a waiting owner's
//! dependent deleted or released). Each reads the whole store: simple and level-triggered,
//! at a cost linear in the number of objects per sweep — an owner/dependent graph kept up to
//! date from the watch is the next step if that cost shows.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_api::internal;
use flotilla_api::{ApiError, FOREGROUND_FINALIZER, ORPHAN_FINALIZER, Propagation, RESOURCES};
use flotilla_consensus::{EventKind, Read};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::common::{is_deleting, str_at};
use super::feed::Message;
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
    tokio::spawn(watch_registry(
        ctx.clone(),
        watched.clone(),
        tx,
        shutdown.clone(),
    ));
    tokio::spawn(run(ctx, watched, rx, shutdown));
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| r.get("uid").and_then(Value::as_str))
}

fn finalizers(obj: &Value) -> Vec<&str> {
    obj.pointer("/metadata/finalizers")
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

/// Whether a change calls for a sweep now rather than at the next period.
fn concerns_gc(kind: EventKind, obj: &Value, prev: Option<&Value>, watched: &Watched) -> bool {
    let uid = str_at(obj, "/metadata/uid");
    match kind {
        EventKind::Delete => {
            watched.owners.contains(uid) || owner_uids(obj).any(|u| watched.waiting.contains(u))
        }
        EventKind::Put => {
            let newly_waiting = waits_for_dependents(obj)
                && prev
                    .is_none_or(|p| !waits_for_dependents(p) || finalizers(p) != finalizers(obj));
            let released = prev.is_some_and(|p| {
                p.pointer("/metadata/ownerReferences") != obj.pointer("/metadata/ownerReferences")
                    && owner_uids(p).any(|u| watched.waiting.contains(u))
            });
            newly_waiting || released
        }
    }
}

async fn watch_registry(
    ctx: Arc<Ctx>,
    watched: Arc<Mutex<Watched>>,
    tx: mpsc::Sender<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut feed = ctx.feed.subscribe();
    // Anything may have happened before the subscription.
    let _ = tx.try_send(());
    loop {
        let message = tokio::select! {
            m = feed.next() => m,
            _ = shutdown.changed() => return,
        };
        let wake = match message {
            Some(Message::Changes(changes)) => {
                // No await while the lock is held.
                let w = watched.lock().unwrap_or_else(|e| e.into_inner());
                changes.iter().any(|c| {
                    c.obj
                        .as_deref()
                        .is_some_and(|obj| concerns_gc(c.kind, obj, c.prev.as_deref(), &w))
                })
            }
            Some(Message::Restart) => true,
            None => return,
        };
        if wake {
            let _ = tx.try_send(());
        }
    }
}

async fn run(
    ctx: Arc<Ctx>,
    watched: Arc<Mutex<Watched>>,
    mut rx: mpsc::Receiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut shards = ctx.shards.clone();
    loop {
        let mut again = false;
        if !ctx.shards.owned().is_empty() {
            match sweep(&ctx).await {
                Ok((w, more)) => {
                    *watched.lock().unwrap_or_else(|e| e.into_inner()) = w;
                    again = more;
                }
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

/// One stored object, as the sweep sees it.
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

/// Every stored object of every kind (events aside), read at or after one linearizable
/// point.
async fn read_all(ctx: &Ctx) -> Result<Vec<Obj>, ApiError> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut read = Read::Linearizable;
    for r in RESOURCES {
        let prefix = r.key_prefix();
        if r.plural == "events" || !seen.insert(prefix.clone()) {
            continue;
        }
        let range = ctx.store.range(&prefix, usize::MAX, read).await?;
        // Later ranges are at least as fresh as the first one's read barrier.
        read = Read::Local;
        for (i, kv) in range.kvs.into_iter().enumerate() {
            // Parsing everything takes a while: let the node's other tasks (Raft) in.
            if i % 512 == 511 {
                tokio::task::yield_now().await;
            }
            let Ok(mut obj) = serde_json::from_slice::<Value>(&kv.value) else {
                continue;
            };
            obj["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
            out.push(Obj { resource: r, obj });
        }
    }
    Ok(out)
}

/// One sweep; returns what the watch should look out for, and whether work was left over.
async fn sweep(ctx: &Ctx) -> Result<(Watched, bool), ApiError> {
    let objects = read_all(ctx).await?;
    let by_uid: HashMap<&str, &Obj> = objects.iter().map(|o| (o.uid(), o)).collect();
    let mut watched = Watched::default();
    // Owner uid → its dependents, each with its reference to that owner.
    let mut dependents: HashMap<&str, Vec<(&Obj, &Value)>> = HashMap::new();
    for o in &objects {
        for reference in o
            .obj
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let uid = str_at(reference, "/uid");
            watched.owners.insert(uid.to_owned());
            dependents.entry(uid).or_default().push((o, reference));
        }
        if waits_for_dependents(&o.obj) {
            watched.waiting.insert(o.uid().to_owned());
        }
    }
    let mut writes = 0;
    for o in &objects {
        if writes >= WRITES_PER_SWEEP {
            return Ok((watched, true));
        }
        let key = key_of(&o.obj);
        if ctx.fence(&key).is_none() {
            continue;
        }
        // One object the API refuses to write (say, stored before a validation rule existed)
        // must not stop the collection of all the others.
        if o.obj.pointer("/metadata/ownerReferences").is_some() {
            match collect_dependent(ctx, o, &by_uid).await {
                Ok(wrote) => writes += usize::from(wrote),
                Err(e) if e.code() >= 500 => return Err(e),
                // Changed or gone since the sweep read it: the next sweep sees it as it is.
                Err(e) if matches!(e.code(), 404 | 409) => {}
                Err(e) => {
                    tracing::warn!(kind = o.resource.kind, %key, error = %e.message(), "cannot collect a dependent")
                }
            }
        }
        if waits_for_dependents(&o.obj) {
            let deps = dependents.get(o.uid()).map(Vec::as_slice).unwrap_or(&[]);
            match finish_owner(ctx, o, deps).await {
                Ok(wrote) => writes += usize::from(wrote),
                Err(e) if e.code() >= 500 => return Err(e),
                Err(e) if matches!(e.code(), 404 | 409) => {}
                Err(e) => {
                    tracing::warn!(kind = o.resource.kind, %key, error = %e.message(), "cannot finish an owner's deletion")
                }
            }
        }
    }
    Ok((watched, false))
}

/// Acts on one dependent; true if it wrote.
async fn collect_dependent(
    ctx: &Ctx,
    dep: &Obj,
    by_uid: &HashMap<&str, &Obj>,
) -> Result<bool, ApiError> {
    let refs: Vec<Value> = dep
        .obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut states = Vec::with_capacity(refs.len());
    for reference in &refs {
        let uid = str_at(reference, "/uid");
        let state = match by_uid.get(uid) {
            Some(owner) => state_of(&owner.obj),
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
async fn finish_owner(ctx: &Ctx, owner: &Obj, deps: &[(&Obj, &Value)]) -> Result<bool, ApiError> {
    let f = finalizers(&owner.obj);
    let mut remove: Vec<&str> = Vec::new();
    if f.contains(&ORPHAN_FINALIZER) && deps.is_empty() {
        remove.push(ORPHAN_FINALIZER);
    }
    let blocking = deps
        .iter()
        .any(|(_, r)| r.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true));
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
            Some(&waiting_pod),
            &watched
        ));
        // A status update of an unrelated object does not.
        assert!(!concerns_gc(EventKind::Put, &pod, Some(&pod), &watched));
        let marked = json!({"metadata": {"uid": "x", "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["foregroundDeletion"]}});
        assert!(concerns_gc(
            EventKind::Put,
            &marked,
            Some(&json!({"metadata": {"uid": "x"}})),
            &watched
        ));
        assert!(!concerns_gc(
            EventKind::Put,
            &marked,
            Some(&marked),
            &watched
        ));
    }
}
