use serde::{Deserialize, Serialize};

/// Setup-time failures (certificates, binding sockets, starting gossip).
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("tls: {0}")]
    Tls(String),
    #[error("io: {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("gossip: {0}")]
    Gossip(String),
    #[error("config: {0}")]
    Config(String),
}

impl MeshError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        MeshError::Io {
            context: context.into(),
            source,
        }
    }
}

/// An error produced by a remote handler (or by the remote server on its behalf);
/// it travels over the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub message: String,
}

impl RemoteError {
    pub fn new(message: impl Into<String>) -> Self {
        RemoteError {
            message: message.into(),
        }
    }
}

/// Failure of an RPC call. Each variant carries its own retry rule.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RpcError {
    /// The deadline passed after the request may have been sent: the outcome is unknown.
    /// The caller may retry with backoff (requests should be idempotent).
    #[error("rpc timeout: {0}")]
    Timeout(String),
    /// The request was never delivered: connecting failed or timed out, TLS was refused, or the
    /// fault plane drops this peer. Back off before retrying.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The connection or stream broke mid-call, or a frame could not be decoded / was too large.
    /// Retry now (a fresh connection is dialed automatically).
    #[error("network error: {0}")]
    Network(String),
    /// The handler (or the remote server on its behalf) answered with an error.
    /// Do not blindly retry.
    #[error("remote error: {0}")]
    Remote(RemoteError),
}
