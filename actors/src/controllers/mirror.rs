//! A node-local copy of the keys under one prefix, kept by a list and then one watch (an
//! informer, in Kubernetes' words): readers take it from memory instead of re-reading and
//! re-parsing the store, and each value is parsed once, when it changes.
//!
//! Events are applied in revision order, so the copy is always a state the store was in: at
//! `revision`, for the keys under the prefix. It trails the store by the watch's delay; a
//! writer that acts on it must compare what it read (mod revisions) in its transaction.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_consensus::{EventKind, KeyValue, Read, Store};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::watch;

use super::feed::{Feed, Message};

/// One key's parsed value and its mod revision.
pub struct Entry<T> {
    pub value: Arc<T>,
    pub mod_revision: u64,
}

impl<T> Clone for Entry<T> {
    fn clone(&self) -> Self {
        Entry {
            value: self.value.clone(),
            mod_revision: self.mod_revision,
        }
    }
}

struct State<T> {
    /// The store revision the copy reflects (0: not listed yet).
    revision: u64,
    /// Key (without the prefix) → entry.
    items: HashMap<String, Entry<T>>,
}

/// The copy; cheap to clone (shared).
pub struct Mirror<T> {
    state: Arc<Mutex<State<T>>>,
    revision: watch::Receiver<u64>,
    /// Bumped when a value under the prefix changed (not when only the revision moved on).
    changes: watch::Receiver<u64>,
}

/// How the task keeping a copy tells its readers.
struct Signals {
    revision: watch::Sender<u64>,
    changes: watch::Sender<u64>,
}

impl Signals {
    fn new() -> (Signals, watch::Receiver<u64>, watch::Receiver<u64>) {
        let (revision, rev_rx) = watch::channel(0);
        let (changes, changes_rx) = watch::channel(0);
        (Signals { revision, changes }, rev_rx, changes_rx)
    }

    /// The copy now reflects `revision`; `changed`: some value under the prefix changed.
    fn reached(&self, revision: u64, changed: bool) {
        self.revision.send_replace(revision);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }
}

impl<T> Clone for Mirror<T> {
    fn clone(&self) -> Self {
        Mirror {
            state: self.state.clone(),
            revision: self.revision.clone(),
            changes: self.changes.clone(),
        }
    }
}

impl<T: Send + Sync + 'static> Mirror<T> {
    /// Starts mirroring `prefix`; `parse` turns a stored value into `T` (`None`: left out, as
    /// if absent). Stops with `shutdown`.
    pub fn start(
        store: Store,
        prefix: &'static str,
        parse: fn(&KeyValue) -> Option<T>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Mirror<T> {
        let state = Arc::new(Mutex::new(State {
            revision: 0,
            items: HashMap::new(),
        }));
        let (tx, rx, changes) = Signals::new();
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = follow(&store, prefix, parse, &shared, &tx) => {}
                    _ = shutdown.changed() => return,
                }
                // The watch ended (expired, or the store is unavailable): list again shortly.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
        Mirror {
            state,
            revision: rx,
            changes,
        }
    }

    /// Like `start`, for a prefix the node's registry feed covers: the changes come from the
    /// feed, already parsed (a node parses each change once, not once per mirror). `parse`
    /// gets the stored object.
    pub fn on_feed(
        store: Store,
        feed: &Feed,
        prefix: &'static str,
        parse: fn(&Arc<Value>) -> Option<T>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Mirror<T> {
        let state = Arc::new(Mutex::new(State {
            revision: 0,
            items: HashMap::new(),
        }));
        let (tx, rx, changes_rx) = Signals::new();
        let shared = state.clone();
        // Subscribed before listing: every change after the list's revision arrives here.
        let mut changes = feed.subscribe();
        tokio::spawn(async move {
            let mut listed_at = None;
            loop {
                if listed_at.is_none() {
                    listed_at = tokio::select! {
                        l = list_parsed(&store, prefix, parse, &shared, &tx) => l,
                        _ = shutdown.changed() => return,
                    };
                    if listed_at.is_none() {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                            _ = shutdown.changed() => return,
                        }
                    }
                }
                let message = tokio::select! {
                    m = changes.next() => m,
                    _ = shutdown.changed() => return,
                };
                let batch = match message {
                    Some(Message::Changes(batch)) => batch,
                    // Changes may have been missed: list again.
                    Some(Message::Restart) => {
                        listed_at = None;
                        continue;
                    }
                    None => return,
                };
                let from = listed_at.unwrap_or(0);
                // Parsed outside the lock: readers never wait.
                let parsed: Vec<(&str, Option<Entry<T>>, u64)> = batch
                    .iter()
                    .filter(|c| c.revision > from)
                    .filter_map(|c| {
                        let key = c.key.strip_prefix(prefix)?;
                        let entry = match (c.kind, &c.obj) {
                            (EventKind::Put, Some(obj)) => parse(obj).map(|v| Entry {
                                value: Arc::new(v),
                                mod_revision: c.revision,
                            }),
                            _ => None,
                        };
                        Some((key, entry, c.revision))
                    })
                    .collect();
                // The copy reflects the whole batch (no change under the prefix in it is a
                // change too), so readers can wait for the feed's latest revision.
                let Some(last) = batch.last().map(|c| c.revision).filter(|r| *r > from) else {
                    continue;
                };
                let changed = !parsed.is_empty();
                {
                    let mut s = shared.lock().unwrap_or_else(|e| e.into_inner());
                    for (key, entry, _) in parsed {
                        match entry {
                            Some(e) => s.items.insert(key.to_owned(), e),
                            None => s.items.remove(key),
                        };
                    }
                    s.revision = last;
                }
                tx.reached(last, changed);
            }
        });
        Mirror {
            state,
            revision: rx,
            changes: changes_rx,
        }
    }

    /// The revision the copy reflects.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Every entry, and the revision they were taken at.
    pub fn snapshot(&self) -> (u64, Vec<(String, Entry<T>)>) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let items = s
            .items
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        (s.revision, items)
    }

    /// Every value, and the revision they were taken at.
    pub fn values(&self) -> (u64, Vec<Entry<T>>) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (s.revision, s.items.values().cloned().collect())
    }

    /// The entries whose keys start with `prefix` (a namespace's, say).
    pub fn under(&self, prefix: &str) -> Vec<Entry<T>> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.items
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// Whether any value satisfies `f` (no copy of the entries taken).
    pub fn any(&self, f: impl Fn(&T) -> bool) -> bool {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.items.values().any(|e| f(&e.value))
    }

    /// Resolves when the copy changes (or is first listed).
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until the copy reflects at least `revision`, at most `limit`; whether it does.
    pub async fn caught_up(&self, revision: u64, limit: Duration) -> bool {
        let mut rx = self.revision.clone();
        tokio::time::timeout(limit, rx.wait_for(|r| *r >= revision))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Lists, then applies the watch from the list's revision until it ends.
async fn follow<T>(
    store: &Store,
    prefix: &'static str,
    parse: fn(&KeyValue) -> Option<T>,
    state: &Mutex<State<T>>,
    tx: &Signals,
) {
    let Ok(list) = store.range(prefix, usize::MAX, Read::Linearizable).await else {
        return;
    };
    let items: HashMap<String, Entry<T>> = list
        .kvs
        .iter()
        .filter_map(|kv| {
            let value = parse(kv)?;
            Some((
                kv.key.get(prefix.len()..)?.to_owned(),
                Entry {
                    value: Arc::new(value),
                    mod_revision: kv.mod_revision,
                },
            ))
        })
        .collect();
    {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.items = items;
        s.revision = list.revision;
    }
    tx.reached(list.revision, true);
    let Ok(mut events) = store.watch(prefix, list.revision + 1) else {
        return;
    };
    while let Some(Ok(batch)) = events.next().await {
        // Parsed outside the lock: readers never wait for JSON.
        let parsed: Vec<(String, Option<Entry<T>>, u64)> = batch
            .iter()
            .filter_map(|e| {
                let key = e.kv.key.get(prefix.len()..)?.to_owned();
                let entry = match e.kind {
                    EventKind::Put => parse(&e.kv).map(|v| Entry {
                        value: Arc::new(v),
                        mod_revision: e.kv.mod_revision,
                    }),
                    EventKind::Delete => None,
                };
                Some((key, entry, e.revision()))
            })
            .collect();
        let Some(last) = parsed.last().map(|p| p.2) else {
            continue;
        };
        {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            for (key, entry, _) in parsed {
                match entry {
                    Some(e) => s.items.insert(key, e),
                    None => s.items.remove(&key),
                };
            }
            s.revision = last;
        }
        tx.reached(last, true);
    }
}

/// Lists `prefix` into the copy (for `on_feed`); the list's revision, `None` if the store
/// could not be read.
async fn list_parsed<T>(
    store: &Store,
    prefix: &'static str,
    parse: fn(&Arc<Value>) -> Option<T>,
    state: &Mutex<State<T>>,
    tx: &Signals,
) -> Option<u64> {
    let list = store
        .range(prefix, usize::MAX, Read::Linearizable)
        .await
        .ok()?;
    let mut items = HashMap::with_capacity(list.kvs.len());
    for (i, kv) in list.kvs.iter().enumerate() {
        // A long list is parsed in steps: the node's other tasks (Raft) share these threads.
        if i % 512 == 511 {
            tokio::task::yield_now().await;
        }
        let Some(value) = serde_json::from_slice::<Value>(&kv.value)
            .ok()
            .map(Arc::new)
            .and_then(|v| parse(&v))
        else {
            continue;
        };
        let Some(key) = kv.key.get(prefix.len()..) else {
            continue;
        };
        items.insert(
            key.to_owned(),
            Entry {
                value: Arc::new(value),
                mod_revision: kv.mod_revision,
            },
        );
    }
    {
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        s.items = items;
        s.revision = list.revision;
    }
    tx.reached(list.revision, true);
    Some(list.revision)
}

/// A stored JSON object, parsed.
pub fn json(kv: &KeyValue) -> Option<serde_json::Value> {
    serde_json::from_slice(&kv.value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::solo_store;
    use flotilla_consensus::{Op, TxnRequest};

    async fn put(store: &Store, key: &str, value: &str) -> u64 {
        store
            .txn(TxnRequest {
                compare: vec![],
                success: vec![Op::Put {
                    key: key.into(),
                    value: value.as_bytes().to_vec(),
                }],
                failure: vec![],
            })
            .await
            .unwrap()
            .revision
    }

    #[tokio::test]
    async fn follows_puts_and_deletes_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = solo_store(dir.path()).await;
        put(&store, "/m/a", "1").await;
        put(&store, "/other/x", "9").await;
        let (_stop, shutdown) = watch::channel(false);
        let parse = |kv: &KeyValue| std::str::from_utf8(&kv.value).ok()?.parse::<u32>().ok();
        let mirror = Mirror::start(store.clone(), "/m/", parse, shutdown);
        put(&store, "/m/b", "2").await;
        put(&store, "/m/bad", "not a number").await;
        let rev = store
            .txn(TxnRequest {
                compare: vec![],
                success: vec![Op::Delete { key: "/m/a".into() }],
                failure: vec![],
            })
            .await
            .unwrap()
            .revision;
        assert!(mirror.caught_up(rev, Duration::from_secs(10)).await);
        let (at, items) = mirror.snapshot();
        assert!(at >= rev);
        let mut got: Vec<(String, u32)> = items.into_iter().map(|(k, e)| (k, *e.value)).collect();
        got.sort();
        assert_eq!(got, vec![("b".to_owned(), 2)]);
    }
}
