//! Voter-set automation, run by whichever node is leader.
//!
//! Rules (checked every `interval`):
//! 1. A live gossip member with the `raft` role that is not in the Raft membership, and was not
//!    removed with `cluster remove`, is added as a learner.
//! 2. While there are fewer voters than `target`, caught-up live learners with the `voter` role
//!    are promoted (in name order, so every leader makes the same choice).
//! 3. A voter that gossip has reported dead (or not seen at all) for longer than `dead_grace` is
//!    replaced by such a learner; it stays a learner so it can catch up if it returns. A dead
//!    voter is never dropped without a replacement: shrinking the voter set would only make the
//!    next failure fatal.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use flotilla_mesh::{Gossip, MemberInfo};
use openraft::ChangeMembers;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::StoreError;
use crate::kv::{Op, TxnRequest};
use crate::store::{Read, Store};
use crate::types::{NodeMeta, node_id_of};

/// Gossip role of a node that takes part in Raft (at least as a learner).
pub const ROLE_RAFT: &str = "raft";
/// Gossip role of a node that may be promoted to voter.
pub const ROLE_VOTER: &str = "voter";
/// Store prefix of nodes taken out for good; automation never re-adds them.
pub const REMOVED_PREFIX: &str = "/flotilla/removed/";

/// How far behind the leader's log a learner may be and still be promoted.
const PROMOTE_MAX_LAG: u64 = 1_000;

#[derive(Debug, Clone)]
pub struct VoterPolicy {
    pub target: usize,
    pub dead_grace: Duration,
    pub interval: Duration,
}

impl Default for VoterPolicy {
    fn default() -> Self {
        VoterPolicy {
            target: 3,
            dead_grace: Duration::from_secs(15),
            interval: Duration::from_millis(500),
        }
    }
}

/// Runs the automation until `shutdown` turns true.
pub fn spawn_voter_automation(
    store: Store,
    gossip: Gossip,
    policy: VoterPolicy,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut dead_since: HashMap<u64, Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(policy.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            if !store.is_leader() {
                dead_since.clear();
                continue;
            }
            if let Err(e) = reconcile(&store, &gossip, &policy, &mut dead_since).await {
                tracing::debug!(error = %e, "voter automation pass failed");
            }
        }
    })
}

async fn reconcile(
    store: &Store,
    gossip: &Gossip,
    policy: &VoterPolicy,
    dead_since: &mut HashMap<u64, Instant>,
) -> Result<(), StoreError> {
    let raft = store.raft();
    let metrics = raft.metrics().borrow_watched().clone();
    if metrics.state != ServerState::Leader {
        return Ok(());
    }
    let membership = metrics.membership_config.membership().clone();
    if membership.get_joint_config().len() > 1 {
        return Ok(()); // a change is in flight; look again next pass
    }
    let removed: BTreeSet<String> = store
        .range(REMOVED_PREFIX, usize::MAX, Read::Local)
        .await?
        .kvs
        .into_iter()
        .map(|kv| kv.key[REMOVED_PREFIX.len()..].to_owned())
        .collect();
    let gossip_members: BTreeMap<String, MemberInfo> = gossip
        .members()
        .into_iter()
        .map(|m| (m.name.clone(), m))
        .collect();
    let alive = |name: &str| gossip_members.get(name).is_some_and(|m| m.alive);

    // 1. New nodes become learners.
    let known: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
    for m in gossip_members.values() {
        let id = node_id_of(&m.name);
        if m.alive
            && m.roles.iter().any(|r| r == ROLE_RAFT)
            && !known.contains(&id)
            && !removed.contains(&m.name)
        {
            let node = NodeMeta {
                name: m.name.clone(),
                rpc_addr: m.rpc_addr.to_string(),
            };
            tracing::info!(node = %node, "adding learner");
            if let Err(e) = raft.add_learner(id, node, false).await {
                tracing::warn!(error = %e, name = %m.name, "add learner failed");
            }
        }
    }

    // 2 and 3. Keep `target` healthy voters.
    let now = Instant::now();
    let voters: BTreeSet<u64> = membership.voter_ids().collect();
    let name_of = |id: &u64| {
        membership
            .get_node(id)
            .map(|n| n.name.clone())
            .unwrap_or_default()
    };
    dead_since.retain(|id, _| voters.contains(id));
    for id in &voters {
        if alive(&name_of(id)) {
            dead_since.remove(id);
        } else {
            dead_since.entry(*id).or_insert(now);
        }
    }
    let expired: BTreeSet<u64> = dead_since
        .iter()
        .filter(|(_, since)| now.duration_since(**since) >= policy.dead_grace)
        .map(|(id, _)| *id)
        .collect();
    let last_index = metrics.last_log_index.unwrap_or(0);
    let matched = |id: &u64| {
        metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(id).cloned().flatten())
            .map(|l| l.index)
    };
    let mut candidates: Vec<(String, u64)> = membership
        .learner_ids()
        .filter_map(|id| {
            let name = name_of(&id);
            let eligible = gossip_members
                .get(&name)
                .is_some_and(|m| m.alive && m.roles.iter().any(|r| r == ROLE_VOTER));
            let caught_up = matched(&id).is_some_and(|i| i + PROMOTE_MAX_LAG >= last_index);
            (eligible && caught_up && !removed.contains(&name)).then_some((name, id))
        })
        .collect();
    candidates.sort();

    let mut desired: BTreeSet<u64> = voters.difference(&expired).copied().collect();
    let mut candidates = candidates.into_iter();
    while desired.len() < policy.target {
        match candidates.next() {
            Some((_, id)) => {
                desired.insert(id);
            }
            None => break,
        }
    }
    // Never shrink the voter set below what it was unless it is above target.
    if desired == voters || (desired.len() < voters.len() && desired.len() < policy.target) {
        return Ok(());
    }
    let names: Vec<String> = desired.iter().map(name_of).collect();
    tracing::info!(voters = ?names, "changing voter set");
    raft.change_membership(ChangeMembers::ReplaceAllVoters(desired), true)
        .await
        .map_err(|e| StoreError::Unavailable(format!("change membership: {e}")))?;
    Ok(())
}

impl Store {
    /// Takes a node out of the cluster for good, forwarding to the leader.
    pub async fn remove_node(&self, name: &str) -> Result<(), StoreError> {
        if self.is_leader() {
            return self.remove_node_on_leader(name).await;
        }
        let status = self.status();
        let leader = status
            .leader
            .and_then(|l| status.members.iter().find(|m| m.name == l).cloned())
            .ok_or_else(|| StoreError::NoLeader("no leader known".into()))?;
        let addr = leader
            .rpc_addr
            .parse()
            .map_err(|e| StoreError::Storage(format!("leader address: {e}")))?;
        crate::service::StoreClient::new(self.inner.rpc.clone(), addr)
            .with_timeout(self.config().op_timeout)
            .call_remove_on_leader(name)
            .await
    }

    pub(crate) async fn remove_node_on_leader(&self, name: &str) -> Result<(), StoreError> {
        if !self.is_leader() {
            return Err(StoreError::NotLeader);
        }
        let id = node_id_of(name);
        let membership = self
            .raft()
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .clone();
        if membership.get_node(&id).is_none() {
            return Err(StoreError::Invalid(format!(
                "{name} is not a member of the cluster"
            )));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.len() == 1 && voters.contains(&id) {
            return Err(StoreError::Invalid(format!(
                "{name} is the last voter; it cannot be removed"
            )));
        }
        // Record first, so automation does not add the node back while gossip still sees it.
        self.write_local(crate::kv::Command::Txn(TxnRequest {
            success: vec![Op::put(format!("{REMOVED_PREFIX}{name}"), Vec::new())],
            ..Default::default()
        }))
        .await?;
        let change = if voters.contains(&id) {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        self.raft()
            .change_membership(change, false)
            .await
            .map_err(|e| StoreError::Unavailable(format!("change membership: {e}")))?;
        tracing::info!(node = name, "removed from the cluster");
        Ok(())
    }
}
