//! Flotilla mesh: gossip membership and failure detection (chitchat), QUIC RPC with mutual
//! TLS (quinn + rustls/ring), the fault plane applied to both, and the shard ring.

mod error;
mod faults;
mod gossip;
mod gossip_transport;
mod ring;
mod rpc;
mod tls;

pub use error::{MeshError, RemoteError, RpcError};
pub use faults::{FaultPlane, FaultRules, Outbound};
pub use gossip::{Gossip, GossipConfig, MemberEvent, MemberInfo, keys};
pub use ring::rendezvous_owner;
pub use rpc::{CallContext, Reply, RpcEndpoint, RpcLimits, Service, decode, encode};
pub use tls::{CLUSTER_SERVER_NAME, ClusterCa, Identity};

/// Re-exported so services can name the handler types without depending on `futures`/`bytes`.
pub use bytes::Bytes;
pub use futures::future::BoxFuture;
pub use futures::stream::BoxStream;
