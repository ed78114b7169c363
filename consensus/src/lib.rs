//! The replicated, versioned key-value store: openraft on redb, replicated over mesh RPC.
//!
//! Only this crate knows openraft. Other crates see `Store` (a node's handle), `StoreClient`
//! (a remote caller), the data model in `kv`, and voter automation.

mod error;
mod kv;
mod log_store;
mod network;
mod service;
mod state_machine;
mod store;
mod types;
mod voters;

pub use error::StoreError;
pub use kv::{
    CmpOp, Command, CommandResult, Compare, Event, EventKind, KeyValue, Op, OpResult, TxnRequest,
    TxnResponse, prefix_end,
};
pub use service::StoreClient;
pub use state_machine::HistoryLimits;
pub use store::{GetResult, MemberStatus, RaftStatus, RangeResult, Read, Store, StoreConfig};
pub use types::{NodeMeta, node_id_of};
pub use voters::{REMOVED_PREFIX, ROLE_RAFT, ROLE_VOTER, VoterPolicy, spawn_voter_automation};

#[cfg(test)]
mod storage_suite;
