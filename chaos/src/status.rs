//! The JSON a node serves at `/flotilla/status`.

use flotilla_consensus::RaftStatus;
use flotilla_mesh::MemberInfo;
use serde::{Deserialize, Serialize};

pub const STATUS_PATH: &str = "/flotilla/status";
pub const REMOVE_PATH: &str = "/flotilla/cluster/remove";
pub const FAULTS_PATH: &str = "/flotilla/chaos/faults";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub name: String,
    pub generation_id: u64,
    pub version: String,
    pub api_addr: String,
    pub rpc_addr: String,
    pub gossip_addr: String,
    /// Ready: the node sees a leader and has applied the log.
    pub ready: bool,
    pub chaos: bool,
    /// Gossip view, self included.
    pub members: Vec<MemberInfo>,
    /// Raft view: this node's, or the leader's when asked with `?leader=true`.
    pub raft: RaftStatus,
}
