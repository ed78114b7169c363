//! The `kv` RPC service every node serves, and `StoreClient`, its remote caller.
//!
//! Clients (the CLI, tests, benchmarks) talk to any node; that node forwards what needs the
//! leader. Requests marked leader-only (`Write`, `ReadIndex`, `RemoveNodeOnLeader`) are
//! answered `NotLeader` instead of being forwarded again, so a request never loops.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use flotilla_mesh::{CallContext, RemoteError, Reply, RpcEndpoint, RpcError, Service};
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::kv::{Command, CommandResult, Event, TxnRequest, TxnResponse};
use crate::store::{GetResult, RaftStatus, RangeResult, Read, Store};

pub(crate) const KV_SERVICE: &str = "kv";

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum KvRequest {
    Get {
        key: String,
        read: Read,
    },
    Range {
        prefix: String,
        limit: usize,
        read: Read,
    },
    Txn {
        req: TxnRequest,
    },
    Compact {
        revision: u64,
    },
    Watch {
        prefix: String,
        from_revision: u64,
    },
    /// This node's own view.
    Status,
    /// The leader's view, forwarded if needed.
    LeaderStatus,
    RemoveNode {
        name: String,
    },
    // Leader-only requests, sent by followers.
    Write {
        cmd: Command,
    },
    ReadIndex,
    RemoveNodeOnLeader {
        name: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum KvResponse {
    Get(GetResult),
    Range(RangeResult),
    Txn(TxnResponse),
    Compacted(u64),
    Status(RaftStatus),
    Removed,
    Written(CommandResult),
    ReadIndex(u64),
}

/// Holds the store weakly: the store owns the RPC endpoint that owns this service, and a
/// strong reference would keep the database open forever.
pub(crate) struct KvService {
    pub store: std::sync::Weak<crate::store::StoreInner>,
}

fn unary(v: Result<KvResponse, StoreError>) -> Result<Reply, RemoteError> {
    Ok(Reply::Unary(flotilla_mesh::encode(&v)?))
}

impl KvService {
    async fn handle(store: Store, req: KvRequest) -> Result<KvResponse, StoreError> {
        Ok(match req {
            KvRequest::Get { key, read } => KvResponse::Get(store.get(&key, read).await?),
            KvRequest::Range {
                prefix,
                limit,
                read,
            } => KvResponse::Range(store.range(&prefix, limit, read).await?),
            KvRequest::Txn { req } => KvResponse::Txn(store.txn(req).await?),
            KvRequest::Compact { revision } => {
                KvResponse::Compacted(store.compact(revision).await?)
            }
            KvRequest::Status => KvResponse::Status(store.status()),
            KvRequest::LeaderStatus => KvResponse::Status(store.leader_status().await?),
            KvRequest::RemoveNode { name } => {
                store.remove_node(&name).await?;
                KvResponse::Removed
            }
            KvRequest::Write { cmd } => KvResponse::Written(store.write_local(cmd).await?),
            KvRequest::ReadIndex => KvResponse::ReadIndex(store.read_index_local().await?),
            KvRequest::RemoveNodeOnLeader { name } => {
                store.remove_node_on_leader(&name).await?;
                KvResponse::Removed
            }
            KvRequest::Watch { .. } => {
                return Err(StoreError::Invalid("watch is a streaming call".into()));
            }
        })
    }
}

impl Service for KvService {
    fn call(
        &self,
        _ctx: CallContext,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Reply, RemoteError>> {
        let store = self.store.upgrade().map(|inner| Store { inner });
        async move {
            let Some(store) = store else {
                return unary(Err(StoreError::Unavailable(
                    "the node is shutting down".into(),
                )));
            };
            let req: KvRequest = flotilla_mesh::decode(&body)?;
            if let KvRequest::Watch {
                prefix,
                from_revision,
            } = &req
            {
                let stream = match store.watch(prefix, *from_revision) {
                    Ok(s) => s,
                    // The first frame carries the error so the caller sees why.
                    Err(e) => futures::stream::iter([Err(e)]).boxed(),
                };
                let frames =
                    stream.map(|item: Result<Vec<Event>, StoreError>| flotilla_mesh::encode(&item));
                return Ok(Reply::Stream(frames.boxed()));
            }
            unary(KvService::handle(store, req).await)
        }
        .boxed()
    }
}

/// A remote caller of one node's `kv` service.
#[derive(Clone)]
pub struct StoreClient {
    rpc: RpcEndpoint,
    addr: SocketAddr,
    timeout: Duration,
}

fn from_rpc(e: RpcError) -> StoreError {
    match e {
        // Not sent: the caller may try another node.
        RpcError::Unreachable(m) => StoreError::Unavailable(m),
        RpcError::Timeout(m) | RpcError::Network(m) => StoreError::Unknown(m),
        RpcError::Remote(r) => StoreError::Unavailable(r.message),
    }
}

impl StoreClient {
    pub fn new(rpc: RpcEndpoint, addr: SocketAddr) -> StoreClient {
        StoreClient {
            rpc,
            addr,
            timeout: Duration::from_secs(15),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> StoreClient {
        self.timeout = timeout;
        self
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    async fn call(&self, req: KvRequest) -> Result<KvResponse, StoreError> {
        let res: Result<KvResponse, StoreError> = self
            .rpc
            .call(self.addr, KV_SERVICE, &req, self.timeout)
            .await
            .map_err(from_rpc)?;
        res
    }

    /// For reads: a connection that broke mid-call (e.g. the node restarted) is retried on a
    /// fresh connection, since repeating a read is harmless.
    async fn call_idempotent(&self, req: impl Fn() -> KvRequest) -> Result<KvResponse, StoreError> {
        let mut attempts = 0;
        loop {
            match self.call(req()).await {
                Err(StoreError::Unknown(m)) if attempts < 2 => {
                    tracing::debug!(addr = %self.addr, error = %m, "retrying a read");
                    attempts += 1;
                }
                other => return other,
            }
        }
    }

    pub async fn get(&self, key: &str, read: Read) -> Result<GetResult, StoreError> {
        match self
            .call_idempotent(|| KvRequest::Get {
                key: key.to_owned(),
                read,
            })
            .await?
        {
            KvResponse::Get(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn range(
        &self,
        prefix: &str,
        limit: usize,
        read: Read,
    ) -> Result<RangeResult, StoreError> {
        match self
            .call_idempotent(|| KvRequest::Range {
                prefix: prefix.to_owned(),
                limit,
                read,
            })
            .await?
        {
            KvResponse::Range(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, StoreError> {
        match self.call(KvRequest::Txn { req }).await? {
            KvResponse::Txn(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn put(
        &self,
        key: &str,
        value: impl Into<Vec<u8>>,
    ) -> Result<TxnResponse, StoreError> {
        self.txn(TxnRequest::put(key, value)).await
    }

    pub async fn compact(&self, revision: u64) -> Result<u64, StoreError> {
        match self.call(KvRequest::Compact { revision }).await? {
            KvResponse::Compacted(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// The answering node's own view of Raft.
    pub async fn status(&self) -> Result<RaftStatus, StoreError> {
        match self.call_idempotent(|| KvRequest::Status).await? {
            KvResponse::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// The leader's view of Raft, with replication progress.
    pub async fn leader_status(&self) -> Result<RaftStatus, StoreError> {
        match self.call_idempotent(|| KvRequest::LeaderStatus).await? {
            KvResponse::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Takes a node out of the cluster for good.
    pub async fn remove_node(&self, name: &str) -> Result<(), StoreError> {
        match self
            .call(KvRequest::RemoveNode {
                name: name.to_owned(),
            })
            .await?
        {
            KvResponse::Removed => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub(crate) async fn call_remove_on_leader(&self, name: &str) -> Result<(), StoreError> {
        match self
            .call(KvRequest::RemoveNodeOnLeader {
                name: name.to_owned(),
            })
            .await?
        {
            KvResponse::Removed => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Changes under `prefix` from `from_revision` (inclusive; 0 = from now).
    pub async fn watch(
        &self,
        prefix: &str,
        from_revision: u64,
    ) -> Result<BoxStream<'static, Result<Vec<Event>, StoreError>>, StoreError> {
        let req = KvRequest::Watch {
            prefix: prefix.to_owned(),
            from_revision,
        };
        let stream = self
            .rpc
            .call_stream::<KvRequest, Result<Vec<Event>, StoreError>>(
                self.addr,
                KV_SERVICE,
                &req,
                self.timeout,
            )
            .await
            .map_err(from_rpc)?;
        Ok(stream
            .map(|item| match item {
                Ok(inner) => inner,
                Err(e) => Err(from_rpc(e)),
            })
            .boxed())
    }
}

fn unexpected(resp: KvResponse) -> StoreError {
    StoreError::Storage(format!("unexpected response {resp:?}"))
}
