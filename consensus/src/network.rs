//! openraft's network over mesh RPC: the client side (`RaftNetworkV2`) and the `raft` service
//! that feeds incoming messages to the local Raft node.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use flotilla_mesh::{CallContext, RemoteError, Reply, RpcEndpoint, RpcError, Service};
use futures::FutureExt;
use futures::future::BoxFuture;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::state_machine::Snapshot;
use crate::types::{NodeMeta, Raft, SnapshotMeta, TypeConfig, Vote};

pub(crate) const RAFT_SERVICE: &str = "raft";

/// Snapshots travel in one message; give them more time than a heartbeat.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Serialize, Deserialize)]
pub(crate) enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<TypeConfig>),
    PreVote(VoteRequest<TypeConfig>),
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
}

/// Creates one client per peer; all share the node's single QUIC endpoint and its pool.
pub(crate) struct Network {
    pub rpc: RpcEndpoint,
}

pub(crate) struct PeerClient {
    rpc: RpcEndpoint,
    target: u64,
    addr: Result<SocketAddr, String>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &NodeMeta) -> PeerClient {
        PeerClient {
            rpc: self.rpc.clone(),
            target,
            addr: node
                .rpc_addr
                .parse()
                .map_err(|e| format!("bad rpc address {:?} of {}: {e}", node.rpc_addr, node.name)),
        }
    }
}

fn to_rpc_error(e: RpcError) -> RPCError<TypeConfig> {
    match e {
        // A peer that does not answer in time is treated as unreachable so openraft backs off
        // instead of hammering a paused or partitioned node.
        RpcError::Timeout(m) | RpcError::Unreachable(m) => {
            RPCError::Unreachable(Unreachable::from_string(m))
        }
        RpcError::Network(m) => RPCError::Network(NetworkError::from_string(m)),
        RpcError::Remote(r) => RPCError::Unreachable(Unreachable::from_string(r.message)),
    }
}

impl PeerClient {
    async fn request<Resp: DeserializeOwned>(
        &self,
        req: &RaftRequest,
        timeout: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let addr = self
            .addr
            .clone()
            .map_err(|m| RPCError::Unreachable(Unreachable::from_string(m)))?;
        let res: Result<Resp, String> = self
            .rpc
            .call(addr, RAFT_SERVICE, req, timeout)
            .await
            .map_err(to_rpc_error)?;
        res.map_err(|m| {
            tracing::debug!(target_node = self.target, error = %m, "raft rpc refused");
            RPCError::Unreachable(Unreachable::from_string(m))
        })
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.request(&RaftRequest::Append(rpc), option.hard_ttl())
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.request(&RaftRequest::Vote(rpc), option.hard_ttl())
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.request(&RaftRequest::PreVote(rpc), option.hard_ttl())
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = RaftRequest::Snapshot {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let timeout = option.hard_ttl().max(SNAPSHOT_TIMEOUT);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            res = self.request(&req, timeout) => Ok(res?),
        }
    }
}

/// The server side: decodes a `RaftRequest` and hands it to the local Raft node.
pub(crate) struct RaftService {
    pub raft: Raft,
}

fn reply<T: Serialize>(v: &T) -> Result<Reply, RemoteError> {
    Ok(Reply::Unary(flotilla_mesh::encode(v)?))
}

impl Service for RaftService {
    fn call(
        &self,
        _ctx: CallContext,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Reply, RemoteError>> {
        let raft = self.raft.clone();
        async move {
            let req: RaftRequest = flotilla_mesh::decode(&body)?;
            match req {
                RaftRequest::Append(r) => {
                    reply(&raft.append_entries(r).await.map_err(|e| e.to_string()))
                }
                RaftRequest::Vote(r) => reply(&raft.vote(r).await.map_err(|e| e.to_string())),
                RaftRequest::PreVote(r) => {
                    reply(&raft.pre_vote(r).await.map_err(|e| e.to_string()))
                }
                RaftRequest::Snapshot { vote, meta, data } => {
                    let snapshot = Snapshot {
                        meta,
                        snapshot: data,
                    };
                    reply(
                        &raft
                            .install_full_snapshot(vote, snapshot)
                            .await
                            .map_err(|e| e.to_string()),
                    )
                }
            }
        }
        .boxed()
    }
}
