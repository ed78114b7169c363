//! One watch of the registry per node, parsed once and shared by every controller on it.
//! Each controller used to watch and parse the pods itself: six of them, each parsing a
//! pod's new and old value, for every change of every pod. Old values are not parsed at all:
//! a subscriber that needs to know what changed keeps what it knew (the GC its index, the
//! kubelet the pods it runs).

use std::sync::Arc;
use std::time::Duration;

use flotilla_consensus::{EventKind, Store};
use futures::StreamExt;
use serde_json::Value;
use tokio::sync::{broadcast, watch};

/// One change of one key, parsed.
pub struct Change {
    pub key: String,
    pub kind: EventKind,
    /// The revision of the change (the key's mod revision; a delete's own revision).
    pub revision: u64,
    /// The new value; for a delete, the last value the key had.
    pub obj: Option<Arc<Value>>,
}

#[derive(Clone)]
pub enum Message {
    /// Changes in revision order.
    Changes(Arc<Vec<Change>>),
    /// The watch restarted (or a subscriber fell behind): anything may have changed.
    Restart,
}

/// The shared feed; subscribers filter by key prefix.
#[derive(Clone)]
pub struct Feed {
    tx: broadcast::Sender<Message>,
    /// The revision of the last change broadcast.
    last: watch::Receiver<u64>,
}

/// Events are left out: no controller acts on them, and they are about a third of all writes
/// (parsing them on every node was wasted work).
const EVENTS: &str = "/registry/core/events/";

/// Batches a subscriber may fall behind by before it is told to start over.
const BACKLOG: usize = 4096;

impl Feed {
    /// Follows `prefix` until `shutdown`.
    pub fn start(store: Store, prefix: &'static str, mut shutdown: watch::Receiver<bool>) -> Feed {
        let (tx, _) = broadcast::channel(BACKLOG);
        let (last_tx, last) = watch::channel(0);
        let feed = Feed {
            tx: tx.clone(),
            last,
        };
        tokio::spawn(async move {
            loop {
                let from = store.local_revision() + 1;
                let _ = tx.send(Message::Restart);
                if let Ok(mut events) = store.watch(prefix, from) {
                    loop {
                        let batch = tokio::select! {
                            b = events.next() => b,
                            _ = shutdown.changed() => return,
                        };
                        let Some(Ok(batch)) = batch else { break };
                        let parse = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).ok();
                        let changes: Vec<Change> = batch
                            .into_iter()
                            .filter(|e| !e.kv.key.starts_with(EVENTS))
                            .map(|e| Change {
                                obj: parse(&e.kv.value).map(Arc::new),
                                kind: e.kind,
                                revision: e.revision(),
                                key: e.kv.key,
                            })
                            .collect();
                        // No subscriber yet is fine: they start with a resync.
                        if let Some(c) = changes.last() {
                            last_tx.send_replace(c.revision);
                            let _ = tx.send(Message::Changes(Arc::new(changes)));
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => return,
                }
            }
        });
        feed
    }

    /// The revision of the last change broadcast: a subscriber that has applied it has
    /// seen everything this node's feed has.
    pub fn revision(&self) -> u64 {
        *self.last.borrow()
    }

    pub fn subscribe(&self) -> Subscription {
        Subscription {
            rx: self.tx.subscribe(),
        }
    }
}

pub struct Subscription {
    rx: broadcast::Receiver<Message>,
}

impl Subscription {
    /// The next message; falling behind reads as `Restart`. `None` once the feed stopped.
    pub async fn next(&mut self) -> Option<Message> {
        match self.rx.recv().await {
            Ok(m) => Some(m),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Message::Restart),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}
