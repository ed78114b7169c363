//! The store's error type. It travels between nodes, so it is plain data.

use serde::{Deserialize, Serialize};

/// What went wrong with a store operation, and so what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    /// The requested revision is older than the watch history: relist, then watch from the
    /// revision of the list.
    #[error("revision {requested} is no longer in the watch history (oldest available: {oldest})")]
    Expired { requested: u64, oldest: u64 },
    /// No leader could be reached before the deadline: back off and retry.
    #[error("no leader reachable: {0}")]
    NoLeader(String),
    /// This node is not the leader (answer to a forwarded request): retry on the leader.
    #[error("not the leader")]
    NotLeader,
    /// The request may or may not have been applied (the connection broke or the deadline
    /// passed after it was sent). Re-read before retrying a write.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The node is shutting down or Raft stopped.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong; retrying will not help.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Local disk or encoding failure.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}
