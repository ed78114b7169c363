//! Controller shards: the objects of every controller kind are split into `count` shards by a
//! hash of `namespace/name`; each shard is owned by the live, ready node that rendezvous hashing
//! picks, and the owner holds the shard's lease record in the store (`/flotilla/shards/N`:
//! owner and epoch). Every write a controller makes compares the lease's mod revision as it
//! was when the owner took it — its fence — so when the shard moves, the old owner's writes
//! fail: two owners of one shard never both win, whatever their views of the membership.
//!
//! A lease is written only when it changes hands (liveness travels by gossip, not by lease
//! renewals). A node takes a shard over when the ring picks it and its gossip declared the
//! holder dead or departed, or when the ring has picked it for a while ([`PATIENCE`] rounds'
//! worth of time): views converge, and this keeps two nodes with different views from trading
//! a shard every round, and a node that just started, and has not heard from everyone yet,
//! from taking shards from live holders (every take fences off the holder's writes).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_consensus::{CmpOp, Compare, Op, Read, Store, TxnRequest};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;

pub const LEASE_PREFIX: &str = "/flotilla/shards/";

/// Rounds' worth of time (`interval` each) the ring must pick this node before it takes a
/// shard from a holder gossip has not declared dead or departed. Time, not rounds: membership
/// changes run extra rounds.
const PATIENCE: u32 = 3;

fn lease_key(shard: u32) -> String {
    format!("{LEASE_PREFIX}{shard:04}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Lease {
    owner: String,
    epoch: u64,
}

/// Live, ready member names, as this node's gossip sees them.
pub type Members = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

pub struct ShardConfig {
    pub node: String,
    pub count: u32,
    pub store: Store,
    pub members: Members,
    pub interval: Duration,
    /// Nodes gossip declared dead or departed: their shards are taken at once.
    pub gone: Option<Members>,
    /// Bumped when gossip's view of the members changes: a round runs at once, so the shards
    /// of a node declared dead move without waiting for `interval`.
    pub kicks: Option<watch::Receiver<u64>>,
}

/// The shards this node owns now, each with its fence (the lease's mod revision). Cheap to
/// clone; changes are announced through [`Shards::changed`].
#[derive(Clone)]
pub struct Shards {
    count: u32,
    owned: watch::Receiver<BTreeMap<u32, u64>>,
}

/// FNV-1a: stable across processes, so every node maps an object to the same shard.
pub(crate) fn hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl Shards {
    /// The shard of an object (`namespace/name`, or the name of a cluster-scoped object).
    pub fn shard_of(&self, key: &str) -> u32 {
        (hash(key) % u64::from(self.count.max(1))) as u32
    }

    /// The fence for writes about objects of `shard`, if this node owns it.
    pub fn fence(&self, shard: u32) -> Option<Compare> {
        self.owned
            .borrow()
            .get(&shard)
            .map(|rev| Compare::ModRevision {
                key: lease_key(shard),
                op: CmpOp::Equal,
                revision: *rev,
            })
    }

    /// The fence for an object's key, if its shard is owned here.
    pub fn fence_for(&self, key: &str) -> Option<Compare> {
        self.fence(self.shard_of(key))
    }

    pub fn owned(&self) -> BTreeMap<u32, u64> {
        self.owned.borrow().clone()
    }

    /// Waits until the owned set changes (false: the host stopped).
    pub async fn changed(&mut self) -> bool {
        self.owned.changed().await.is_ok()
    }
}

/// Starts this node's shard host; it stops with `shutdown`.
pub fn start(mut config: ShardConfig, mut shutdown: watch::Receiver<bool>) -> Shards {
    let (tx, rx) = watch::channel(BTreeMap::new());
    let count = config.count;
    let mut kicks = config.kicks.take();
    tokio::spawn(async move {
        let mut picked: BTreeMap<u32, Instant> = BTreeMap::new();
        loop {
            match round(&config, &mut picked).await {
                Ok(owned) => {
                    tx.send_if_modified(|cur| {
                        let changed = *cur != owned;
                        if changed {
                            tracing::info!(node = %config.node, shards = owned.len(), "controller shards owned");
                            *cur = owned;
                        }
                        changed
                    });
                }
                // Without the store (no quorum) writes fail anyway; keep what we had.
                Err(e) => tracing::debug!(error = %e, "shard round failed"),
            }
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
                _ = tokio::time::sleep(config.interval) => {}
                _ = kicked => {}
                _ = shutdown.changed() => return,
            }
        }
    });
    Shards { count, owned: rx }
}

/// One round: take the shards the ring gives us; report those whose lease we hold.
async fn round(
    config: &ShardConfig,
    picked: &mut BTreeMap<u32, Instant>,
) -> Result<BTreeMap<u32, u64>, flotilla_consensus::StoreError> {
    let mut members = (config.members)();
    members.sort();
    members.dedup();
    let leases: BTreeMap<String, (Lease, u64)> = config
        .store
        .range(LEASE_PREFIX, usize::MAX, Read::Linearizable)
        .await?
        .kvs
        .into_iter()
        .filter_map(|kv| {
            let lease = serde_json::from_slice::<Lease>(&kv.value).ok()?;
            Some((kv.key, (lease, kv.mod_revision)))
        })
        .collect();
    let gone = config.gone.as_ref().map(|g| g()).unwrap_or_default();
    let me_live = members.contains(&config.node);
    let mut owned = BTreeMap::new();
    for shard in 0..config.count {
        let mine = me_live
            && flotilla_mesh::rendezvous_owner(u64::from(shard), &members)
                .is_some_and(|o| *o == config.node);
        if !mine {
            picked.remove(&shard);
            continue;
        }
        let patient = picked.entry(shard).or_insert_with(Instant::now).elapsed()
            >= config.interval * PATIENCE;
        let key = lease_key(shard);
        let (compare, epoch) = match leases.get(&key) {
            Some((lease, rev)) if lease.owner == config.node => {
                owned.insert(shard, *rev);
                continue;
            }
            Some((lease, _)) if !patient && !gone.contains(&lease.owner) => continue,
            Some((lease, rev)) => (
                Compare::ModRevision {
                    key: key.clone(),
                    op: CmpOp::Equal,
                    revision: *rev,
                },
                lease.epoch + 1,
            ),
            None => (Compare::Missing { key: key.clone() }, 1),
        };
        let value = serde_json::to_vec(&Lease {
            owner: config.node.clone(),
            epoch,
        })
        .unwrap_or_default();
        let resp = config
            .store
            .txn(TxnRequest {
                compare: vec![compare],
                success: vec![Op::Put { key, value }],
                failure: vec![],
            })
            .await?;
        if resp.succeeded {
            owned.insert(shard, resp.revision);
        }
    }
    Ok(owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::solo_store;

    /// Two nodes that each believe they are alone: the second takes every shard, and from
    /// then on the first one's fenced writes fail while the second one's succeed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_moved_shard_fences_off_its_old_owner() {
        let dir = tempfile::tempdir().unwrap();
        let store = solo_store(dir.path()).await;
        let (_stop, shutdown) = watch::channel(false);
        let host = |name: &str| {
            let me = name.to_owned();
            start(
                ShardConfig {
                    node: name.to_owned(),
                    count: 4,
                    store: store.clone(),
                    members: Arc::new(move || vec![me.clone()]),
                    interval: Duration::from_millis(50),
                    gone: None,
                    kicks: None,
                },
                shutdown.clone(),
            )
        };
        let wait_all = |s: Shards| async move {
            for _ in 0..200 {
                if s.owned().len() == 4 {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("shards not taken");
        };
        let a = wait_all(host("a")).await;
        let stale = a.fence(2).unwrap();
        let b = wait_all(host("b")).await;
        let write = |fence: Compare| {
            let store = store.clone();
            async move {
                store
                    .txn(TxnRequest {
                        compare: vec![fence],
                        success: vec![Op::Put {
                            key: "/registry/x".into(),
                            value: b"1".to_vec(),
                        }],
                        failure: vec![],
                    })
                    .await
                    .unwrap()
                    .succeeded
            }
        };
        assert!(!write(stale).await, "the old owner's write must fail");
        assert!(write(b.fence(2).unwrap()).await);
        assert_eq!(b.shard_of("default/web"), a.shard_of("default/web"));
    }
}
