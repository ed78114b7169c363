//! openraft's type configuration. Nothing outside this crate names an openraft type.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::kv::{Command, CommandResult};

/// A member of the Raft group as recorded in the replicated membership config.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeMeta {
    pub name: String,
    /// The node's mesh RPC address (`ip:port`).
    pub rpc_addr: String,
}

impl fmt::Display for NodeMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.rpc_addr)
    }
}

openraft::declare_raft_types!(
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = NodeMeta,
);

pub(crate) type Raft = openraft::Raft<TypeConfig, crate::state_machine::StateMachine>;
pub(crate) type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub(crate) type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub(crate) type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub(crate) type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;

/// The Raft node id of a node name. Names are unique in a cluster, so a stable 64-bit hash
/// (FNV-1a) gives every node the same id across restarts without a registry.
pub fn node_id_of(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(super::node_id_of("node-1"), super::node_id_of("node-1"));
        assert_ne!(super::node_id_of("node-1"), super::node_id_of("node-2"));
    }
}
