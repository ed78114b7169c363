//! QUIC RPC: one quinn endpoint per node (server and client), mutual TLS against the cluster
//! CA, one bi-directional stream per request.
//!
//! Wire format (all integers big-endian):
//! - a frame is `u32 length` followed by `length` bytes; `length` is checked against
//!   [`RpcLimits::max_frame_bytes`] before anything is allocated;
//! - request: a header frame (msgpack `{service}`), then a body frame (raw bytes), then the
//!   client finishes its send side;
//! - response frames: one tag byte + payload. `OK` (unary reply), `ERR` (msgpack
//!   [`RemoteError`]), `STREAM_START`, then `ITEM`s, ended by `END` or `STREAM_ERR`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, Either};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{
    Connection, ConnectionError, IdleTimeout, RecvStream, SendStream, TransportConfig, VarInt,
};
use rustls_pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::debug;

use crate::error::{MeshError, RemoteError, RpcError};
use crate::faults::{FaultPlane, Outbound};
use crate::tls::{CLUSTER_SERVER_NAME, Identity, peer_common_name};

const T_OK: u8 = 0;
const T_ERR: u8 = 1;
const T_STREAM_START: u8 = 2;
const T_ITEM: u8 = 3;
const T_STREAM_ERR: u8 = 4;
const T_END: u8 = 5;

/// Application error codes for QUIC stream resets / connection closes.
const CODE_OK: u32 = 0;
const CODE_BAD_REQUEST: u32 = 1;
const CODE_DROPPED: u32 = 2;

/// A client has this long to deliver its request; stops idle streams from pinning slots.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a header frame may be (service names are short).
const MAX_HEADER_BYTES: usize = 4096;

/// Transport limits of an endpoint.
#[derive(Debug, Clone)]
pub struct RpcLimits {
    /// Largest frame accepted or sent (request body, reply, stream item). Default 16 MiB.
    pub max_frame_bytes: usize,
    /// Concurrent requests (streams) a peer may have open on one connection; further calls
    /// wait for a free slot. Default 256.
    pub max_concurrent_streams: u32,
    /// A connection with no traffic for this long is closed. Default 4 s.
    pub idle_timeout: Duration,
    /// Keep-alive ping interval (must be below `idle_timeout`; zero disables). Default 1 s.
    pub keep_alive: Duration,
}

impl Default for RpcLimits {
    fn default() -> Self {
        RpcLimits {
            max_frame_bytes: 16 * 1024 * 1024,
            max_concurrent_streams: 256,
            // A silent peer (killed, paused, partitioned) is given up after 4 s, so pooled
            // connections to a dead process do not linger; keep-alives keep idle links open.
            idle_timeout: Duration::from_secs(4),
            keep_alive: Duration::from_secs(1),
        }
    }
}

/// Who is calling: the remote address and the CN of its (CA-verified) client certificate.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub peer_addr: SocketAddr,
    pub peer_name: String,
}

/// A handler's answer: one message, or a stream of messages (e.g. a watch).
pub enum Reply {
    Unary(Bytes),
    Stream(BoxStream<'static, Result<Bytes, RemoteError>>),
}

/// A named RPC service. Bodies are msgpack (see [`encode`]/[`decode`]).
pub trait Service: Send + Sync + 'static {
    fn call(&self, ctx: CallContext, body: Bytes)
    -> BoxFuture<'static, Result<Reply, RemoteError>>;

    /// A call whose caller keeps sending after the request ([`RpcEndpoint::call_duplex`]):
    /// `input` yields those frames and ends when the caller finishes or goes away. Services
    /// that take no input need not implement it.
    fn call_duplex(
        &self,
        ctx: CallContext,
        body: Bytes,
        input: BoxStream<'static, Bytes>,
    ) -> BoxFuture<'static, Result<Reply, RemoteError>> {
        drop(input);
        self.call(ctx, body)
    }
}

/// Closures are services, which keeps small handlers and tests terse.
impl<F> Service for F
where
    F: Fn(CallContext, Bytes) -> BoxFuture<'static, Result<Reply, RemoteError>>
        + Send
        + Sync
        + 'static,
{
    fn call(
        &self,
        ctx: CallContext,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Reply, RemoteError>> {
        self(ctx, body)
    }
}

/// Serializes with named fields (`to_vec_named`): k8s types do not round-trip positionally.
pub fn encode<T: Serialize>(v: &T) -> Result<Bytes, RemoteError> {
    rmp_serde::to_vec_named(v)
        .map(Bytes::from)
        .map_err(|e| RemoteError::new(format!("encode: {e}")))
}

pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, RemoteError> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(b));
    let value = T::deserialize(&mut de).map_err(|e| RemoteError::new(format!("decode: {e}")))?;
    // A valid prefix followed by junk is junk: without this check random bytes that happen
    // to start with a small integer decode as a unit enum variant.
    if de.position() != b.len() as u64 {
        return Err(RemoteError::new(format!(
            "decode: {} trailing bytes after the message",
            b.len() as u64 - de.position()
        )));
    }
    Ok(value)
}

#[derive(Serialize, Deserialize)]
struct RequestHeader {
    service: String,
}

struct Shared {
    services: RwLock<HashMap<&'static str, Arc<dyn Service>>>,
    faults: FaultPlane,
    limits: RpcLimits,
}

type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

struct Inner {
    endpoint: quinn::Endpoint,
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    /// One slot per peer; the per-peer async lock makes concurrent callers share one dial
    /// while calls to other peers proceed (the map lock is never held across an await).
    pool: Mutex<HashMap<SocketAddr, Slot>>,
    /// The runtime the endpoint was made on: new connections are dialled there too, so
    /// their drivers (packets, crypto, timers) run beside the endpoint's, whichever runtime
    /// the caller is on (a node keeps its transport on a runtime of its own).
    runtime: tokio::runtime::Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Stops the accept loop and releases the UDP port once the last handle goes.
        self.endpoint
            .close(VarInt::from_u32(CODE_OK), b"endpoint dropped");
    }
}

/// A node's RPC endpoint. Cheap to clone.
#[derive(Clone)]
pub struct RpcEndpoint {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RpcEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RpcEndpoint")
            .field("local_addr", &self.inner.local_addr)
            .finish()
    }
}

fn transport_config(limits: &RpcLimits) -> Result<Arc<TransportConfig>, MeshError> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(limits.max_concurrent_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    let idle = IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|e| MeshError::Config(format!("idle_timeout: {e}")))?;
    t.max_idle_timeout(Some(idle));
    if !limits.keep_alive.is_zero() {
        t.keep_alive_interval(Some(limits.keep_alive));
    }
    Ok(Arc::new(t))
}

fn configs(
    identity: &Identity,
    limits: &RpcLimits,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), MeshError> {
    let (server_tls, client_tls) = identity.rustls_configs()?;
    let transport = transport_config(limits)?;
    let server_crypto = QuicServerConfig::try_from(server_tls)
        .map_err(|e| MeshError::Tls(format!("quic server config: {e}")))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(transport.clone());
    let client_crypto = QuicClientConfig::try_from(client_tls)
        .map_err(|e| MeshError::Tls(format!("quic client config: {e}")))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    Ok((server, client))
}

impl RpcEndpoint {
    /// Binds the node's endpoint: serves registered services and makes outgoing calls from
    /// the same UDP port.
    pub async fn bind(
        addr: SocketAddr,
        identity: &Identity,
        faults: FaultPlane,
        limits: RpcLimits,
    ) -> Result<RpcEndpoint, MeshError> {
        let (server_config, client_config) = configs(identity, &limits)?;
        let mut endpoint = quinn::Endpoint::server(server_config, addr)
            .map_err(|e| MeshError::io(format!("bind rpc endpoint {addr}"), e))?;
        endpoint.set_default_client_config(client_config);
        let ep = Self::from_endpoint(endpoint, faults, limits)?;
        tokio::spawn(accept_loop(
            ep.inner.endpoint.clone(),
            ep.inner.shared.clone(),
        ));
        Ok(ep)
    }

    /// A client-only endpoint on 127.0.0.1:0 (CLI, tests, benchmarks).
    pub async fn client(identity: &Identity) -> Result<RpcEndpoint, MeshError> {
        Self::client_on(([127, 0, 0, 1], 0).into(), identity).await
    }

    /// A client-only endpoint on `bind` (use 0.0.0.0:0 to reach other hosts).
    pub async fn client_on(
        bind: SocketAddr,
        identity: &Identity,
    ) -> Result<RpcEndpoint, MeshError> {
        let limits = RpcLimits::default();
        let (_, client_config) = configs(identity, &limits)?;
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| MeshError::io(format!("bind rpc client {bind}"), e))?;
        endpoint.set_default_client_config(client_config);
        Self::from_endpoint(endpoint, FaultPlane::default(), limits)
    }

    fn from_endpoint(
        endpoint: quinn::Endpoint,
        faults: FaultPlane,
        limits: RpcLimits,
    ) -> Result<RpcEndpoint, MeshError> {
        let local_addr = endpoint
            .local_addr()
            .map_err(|e| MeshError::io("rpc local addr", e))?;
        Ok(RpcEndpoint {
            inner: Arc::new(Inner {
                endpoint,
                local_addr,
                shared: Arc::new(Shared {
                    services: RwLock::new(HashMap::new()),
                    faults,
                    limits,
                }),
                pool: Mutex::new(HashMap::new()),
                runtime: tokio::runtime::Handle::current(),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    pub fn faults(&self) -> &FaultPlane {
        &self.inner.shared.faults
    }

    /// Registers (or replaces) the handler for `service`. Requests for unregistered services
    /// get `RpcError::Remote("unknown service: …")`.
    pub fn register(&self, service: &'static str, handler: Arc<dyn Service>) {
        self.inner
            .shared
            .services
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(service, handler);
    }

    /// Unary call with an overall deadline.
    ///
    /// Errors: `Unreachable` if the request was never sent (connect failed or did not finish
    /// before the deadline, TLS refused, or the fault plane drops `peer` — that last case fails
    /// fast rather than waiting out the timeout); `Timeout` if the deadline passed after the
    /// request went out; `Network` if the stream broke or the reply was undecodable;
    /// `Remote` for handler errors and for requests larger than `max_frame_bytes`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: SocketAddr,
        service: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let body = encode(req).map_err(RpcError::Remote)?;
        let reply = self.call_raw(peer, service, body, timeout).await?;
        decode(&reply).map_err(|e| RpcError::Network(format!("reply: {}", e.message)))
    }

    /// [`call`](Self::call) with pre-encoded request and reply bodies.
    pub async fn call_raw(
        &self,
        peer: SocketAddr,
        service: &str,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, RpcError> {
        let deadline = Instant::now() + timeout;
        self.check_request_size(&body)?;
        let faults = self.outbound_faults(peer, deadline).await?;
        let max = self.inner.shared.limits.max_frame_bytes;
        let mut redialed = false;
        loop {
            let conn = self.connect_by(peer, deadline).await?;
            let attempt = async {
                if faults.duplicate {
                    // Two copies on two streams; the first answer wins, as a receiver of
                    // duplicated packets would see.
                    let a = unary_attempt(conn.clone(), service, body.clone(), max).boxed();
                    let b = unary_attempt(conn.clone(), service, body.clone(), max).boxed();
                    match futures::future::select(a, b).await {
                        Either::Left((r, _)) | Either::Right((r, _)) => r,
                    }
                } else {
                    unary_attempt(conn.clone(), service, body.clone(), max).await
                }
            };
            match timeout_at(deadline, attempt).await {
                Err(_) => return Err(RpcError::Timeout(format!("{peer}/{service}"))),
                Ok(Ok(reply)) => return Ok(reply),
                // A pooled connection that died before the request went out: nothing was
                // delivered, so one fresh dial is safe.
                Ok(Err(Attempt::NotSent(e))) if !redialed && conn.close_reason().is_some() => {
                    debug!(%peer, error = %e, "pooled connection dead, redialing");
                    redialed = true;
                }
                Ok(Err(Attempt::NotSent(e) | Attempt::Sent(e))) => return Err(e),
            }
        }
    }

    /// Server-streaming call (watches). `connect_timeout` bounds connecting, sending the
    /// request and the handler's acceptance; items then arrive without a deadline. The stream
    /// ends when the server ends it; a broken connection yields one `Network` error and ends.
    /// A unary reply is delivered as a one-item stream. Fault-plane `duplicate` is not applied
    /// to streams.
    pub async fn call_stream<Req: Serialize, Resp: DeserializeOwned + Send + 'static>(
        &self,
        peer: SocketAddr,
        service: &str,
        req: &Req,
        connect_timeout: Duration,
    ) -> Result<BoxStream<'static, Result<Resp, RpcError>>, RpcError> {
        let deadline = Instant::now() + connect_timeout;
        let body = encode(req).map_err(RpcError::Remote)?;
        self.check_request_size(&body)?;
        self.outbound_faults(peer, deadline).await?;
        let max = self.inner.shared.limits.max_frame_bytes;
        let mut redialed = false;
        let (recv, first) = loop {
            let conn = self.connect_by(peer, deadline).await?;
            let attempt = async {
                let mut recv = send_request(&conn, service, &body).await?;
                let first = read_response(&mut recv, max).await.map_err(Attempt::Sent)?;
                Ok::<_, Attempt>((recv, first))
            };
            match timeout_at(deadline, attempt).await {
                Err(_) => return Err(RpcError::Timeout(format!("{peer}/{service}"))),
                Ok(Ok(v)) => break v,
                Ok(Err(Attempt::NotSent(e))) if !redialed && conn.close_reason().is_some() => {
                    debug!(%peer, error = %e, "pooled connection dead, redialing");
                    redialed = true;
                }
                Ok(Err(Attempt::NotSent(e) | Attempt::Sent(e))) => return Err(e),
            }
        };
        match first {
            Response::StreamStart => Ok(item_stream::<Resp>(recv, max)),
            Response::Ok(b) => {
                let item =
                    decode(&b).map_err(|e| RpcError::Network(format!("reply: {}", e.message)));
                Ok(futures::stream::once(async move { item }).boxed())
            }
            Response::Err(e) => Err(RpcError::Remote(e)),
            other => Err(RpcError::Network(format!(
                "unexpected first frame {other:?}"
            ))),
        }
    }

    /// A streaming call whose caller also streams: `input`'s frames follow the request on
    /// the same QUIC stream, in order, and reach the service's
    /// [`call_duplex`](Service::call_duplex) (interactive exec). Deadlines and errors are as
    /// for [`call_stream`](Self::call_stream); the input ends when `input` does or when the
    /// returned stream is dropped. No redial: the input is consumed by the first attempt.
    pub async fn call_duplex<Req: Serialize, Resp: DeserializeOwned + Send + 'static>(
        &self,
        peer: SocketAddr,
        service: &str,
        req: &Req,
        mut input: BoxStream<'static, Bytes>,
        connect_timeout: Duration,
    ) -> Result<BoxStream<'static, Result<Resp, RpcError>>, RpcError> {
        let deadline = Instant::now() + connect_timeout;
        let body = encode(req).map_err(RpcError::Remote)?;
        self.check_request_size(&body)?;
        self.outbound_faults(peer, deadline).await?;
        let max = self.inner.shared.limits.max_frame_bytes;
        let conn = self.connect_by(peer, deadline).await?;
        let attempt = async {
            let (send, mut recv) = open_request(&conn, service, &body)
                .await
                .map_err(|(Attempt::NotSent(e) | Attempt::Sent(e))| e)?;
            let first = read_response(&mut recv, max).await?;
            Ok::<_, RpcError>((send, recv, first))
        };
        let (mut send, recv, first) = match timeout_at(deadline, attempt).await {
            Err(_) => return Err(RpcError::Timeout(format!("{peer}/{service}"))),
            Ok(r) => r?,
        };
        match first {
            Response::StreamStart => {}
            Response::Ok(b) => {
                let item =
                    decode(&b).map_err(|e| RpcError::Network(format!("reply: {}", e.message)));
                return Ok(futures::stream::once(async move { item }).boxed());
            }
            Response::Err(e) => return Err(RpcError::Remote(e)),
            other => {
                return Err(RpcError::Network(format!(
                    "unexpected first frame {other:?}"
                )));
            }
        }
        // The writer lives as long as the reply stream: dropping the stream stops the input.
        let writer = tokio::spawn(async move {
            while let Some(frame) = input.next().await {
                if frame.len() > max || write_frame(&mut send, None, &frame).await.is_err() {
                    return;
                }
            }
            let _ = send.finish();
        });
        let abort = AbortOnDrop(writer);
        Ok(item_stream::<Resp>(recv, max)
            .map(move |item| {
                let _ = &abort;
                item
            })
            .boxed())
    }

    /// Graceful shutdown: closes all connections and waits (briefly) for peers to be told.
    pub async fn close(&self) {
        self.inner
            .endpoint
            .close(VarInt::from_u32(CODE_OK), b"closing");
        let _ = timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }

    fn check_request_size(&self, body: &Bytes) -> Result<(), RpcError> {
        let max = self.inner.shared.limits.max_frame_bytes;
        if body.len() > max {
            // Deterministic: retrying cannot help, so this is not a Network error.
            return Err(RpcError::Remote(RemoteError::new(format!(
                "request of {} bytes exceeds max frame {max}",
                body.len()
            ))));
        }
        Ok(())
    }

    /// Applies drop/delay rules for a message to `peer`; returns the decision for the rest.
    async fn outbound_faults(
        &self,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Result<Outbound, RpcError> {
        let faults = self.inner.shared.faults.outbound(peer);
        if faults.drop {
            return Err(RpcError::Unreachable(format!(
                "{peer}: dropped by fault plane"
            )));
        }
        if let Some(delay) = faults.delay
            && timeout_at(deadline, tokio::time::sleep(delay))
                .await
                .is_err()
        {
            return Err(RpcError::Timeout(format!("{peer}: fault-plane delay")));
        }
        Ok(faults)
    }

    async fn connect_by(
        &self,
        peer: SocketAddr,
        deadline: Instant,
    ) -> Result<Connection, RpcError> {
        match timeout_at(deadline, self.connection(peer)).await {
            Err(_) => Err(RpcError::Unreachable(format!("{peer}: connect timed out"))),
            Ok(r) => r,
        }
    }

    /// Closes and forgets the pooled connection to `peer` (e.g. gossip saw it restart or die),
    /// so the next call dials afresh instead of waiting for the old one to time out.
    pub fn disconnect(&self, peer: SocketAddr) {
        let slot = self
            .inner
            .pool
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&peer);
        if let Some(slot) = slot
            && let Ok(guard) = slot.try_lock()
            && let Some(conn) = guard.as_ref()
        {
            conn.close(VarInt::from_u32(0), b"peer restarted or died");
        }
    }

    /// A live pooled connection to `peer`, dialing if there is none.
    async fn connection(&self, peer: SocketAddr) -> Result<Connection, RpcError> {
        let slot: Slot = {
            let mut pool = self.inner.pool.lock().unwrap_or_else(|e| e.into_inner());
            pool.entry(peer).or_default().clone()
        };
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref()
            && conn.close_reason().is_none()
        {
            return Ok(conn.clone());
        }
        *guard = None;
        let endpoint = self.inner.endpoint.clone();
        let dial = self.inner.runtime.spawn(async move {
            endpoint
                .connect(peer, CLUSTER_SERVER_NAME)
                .map_err(|e| RpcError::Unreachable(format!("{peer}: {e}")))?
                .await
                .map_err(|e| RpcError::Unreachable(format!("{peer}: {e}")))
        });
        let conn = dial
            .await
            .map_err(|e| RpcError::Unreachable(format!("{peer}: dial task: {e}")))??;
        *guard = Some(conn.clone());
        Ok(conn)
    }
}

/// Whether a failed attempt may have delivered the request.
enum Attempt {
    NotSent(RpcError),
    Sent(RpcError),
}

async fn unary_attempt(
    conn: Connection,
    service: &str,
    body: Bytes,
    max: usize,
) -> Result<Bytes, Attempt> {
    let mut recv = send_request(&conn, service, &body).await?;
    match read_response(&mut recv, max).await.map_err(Attempt::Sent)? {
        Response::Ok(b) => Ok(b),
        Response::Err(e) => Err(Attempt::Sent(RpcError::Remote(e))),
        Response::StreamStart => Err(Attempt::Sent(RpcError::Remote(RemoteError::new(
            "service replied with a stream; use call_stream",
        )))),
        other => Err(Attempt::Sent(RpcError::Network(format!(
            "unexpected frame {other:?}"
        )))),
    }
}

/// Aborts a background task when the handle that owns it goes.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn send_request(
    conn: &Connection,
    service: &str,
    body: &[u8],
) -> Result<RecvStream, Attempt> {
    let (mut send, recv) = open_request(conn, service, body).await?;
    let _ = send.finish();
    Ok(recv)
}

/// Opens a stream and sends the request, leaving the sending side open.
async fn open_request(
    conn: &Connection,
    service: &str,
    body: &[u8],
) -> Result<(SendStream, RecvStream), Attempt> {
    let (mut send, recv) = conn
        .open_bi()
        .await
        .map_err(|e| Attempt::NotSent(conn_error(&e)))?;
    let header = rmp_serde::to_vec_named(&RequestHeader {
        service: service.to_string(),
    })
    .map_err(|e| {
        Attempt::NotSent(RpcError::Remote(RemoteError::new(format!(
            "encode header: {e}"
        ))))
    })?;
    // Streams are opened lazily, so a dead connection surfaces on the first write.
    write_frame(&mut send, None, &header)
        .await
        .map_err(|e| Attempt::NotSent(write_error(&e)))?;
    write_frame(&mut send, None, body)
        .await
        .map_err(|e| Attempt::Sent(write_error(&e)))?;
    Ok((send, recv))
}

fn is_crypto_code(code: u64) -> bool {
    (0x100..0x200).contains(&code)
}

/// TLS failures mean "this peer will not talk to us" (back off); anything else is a broken
/// connection (retry).
fn conn_error(e: &ConnectionError) -> RpcError {
    match e {
        ConnectionError::ConnectionClosed(c) if is_crypto_code(u64::from(c.error_code)) => {
            RpcError::Unreachable(format!("tls refused: {e}"))
        }
        ConnectionError::TransportError(t) if is_crypto_code(u64::from(t.code)) => {
            RpcError::Unreachable(format!("tls refused: {e}"))
        }
        ConnectionError::VersionMismatch => RpcError::Unreachable(e.to_string()),
        _ => RpcError::Network(format!("connection: {e}")),
    }
}

fn write_error(e: &quinn::WriteError) -> RpcError {
    match e {
        quinn::WriteError::ConnectionLost(c) => conn_error(c),
        other => RpcError::Network(format!("write: {other}")),
    }
}

#[derive(Debug)]
enum FrameError {
    TooLarge(usize),
    Truncated,
    Read(quinn::ReadError),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooLarge(n) => write!(f, "frame of {n} bytes exceeds limit"),
            FrameError::Truncated => write!(f, "stream ended mid-frame"),
            FrameError::Read(e) => write!(f, "read: {e}"),
        }
    }
}

impl FrameError {
    fn into_rpc(self) -> RpcError {
        match self {
            FrameError::Read(quinn::ReadError::ConnectionLost(c)) => conn_error(&c),
            other => RpcError::Network(other.to_string()),
        }
    }
}

/// Reads one frame; `Ok(None)` if the stream finished cleanly at a frame boundary.
async fn read_frame(recv: &mut RecvStream, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => return Err(FrameError::Read(e)),
    }
    let len = u32::from_be_bytes(len) as usize;
    // Checked before allocating: the length is attacker-controlled.
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = vec![0u8; len];
    match recv.read_exact(&mut buf).await {
        Ok(()) => Ok(Some(buf)),
        Err(quinn::ReadExactError::FinishedEarly(_)) => Err(FrameError::Truncated),
        Err(quinn::ReadExactError::ReadError(e)) => Err(FrameError::Read(e)),
    }
}

async fn write_frame(
    send: &mut SendStream,
    tag: Option<u8>,
    payload: &[u8],
) -> Result<(), quinn::WriteError> {
    let len = payload.len() + usize::from(tag.is_some());
    let Ok(len) = u32::try_from(len) else {
        // Callers enforce max_frame_bytes first; this only guards the u32 wire field.
        return Err(quinn::WriteError::ClosedStream);
    };
    let mut head = Vec::with_capacity(5);
    head.extend_from_slice(&len.to_be_bytes());
    head.extend(tag);
    send.write_all(&head).await?;
    send.write_all(payload).await
}

#[derive(Debug)]
enum Response {
    Ok(Bytes),
    Err(RemoteError),
    StreamStart,
    Item(Bytes),
    StreamErr(RemoteError),
    End,
}

fn remote_error_from(payload: &[u8]) -> RemoteError {
    decode::<RemoteError>(payload)
        .unwrap_or_else(|e| RemoteError::new(format!("undecodable remote error: {}", e.message)))
}

async fn read_response(recv: &mut RecvStream, max: usize) -> Result<Response, RpcError> {
    // +1: the tag byte is part of the frame.
    let frame = read_frame(recv, max.saturating_add(1))
        .await
        .map_err(FrameError::into_rpc)?
        .ok_or_else(|| RpcError::Network("stream closed without a response".to_string()))?;
    let Some((&tag, payload)) = frame.split_first() else {
        return Err(RpcError::Network("empty response frame".to_string()));
    };
    Ok(match tag {
        T_OK => Response::Ok(Bytes::copy_from_slice(payload)),
        T_ERR => Response::Err(remote_error_from(payload)),
        T_STREAM_START => Response::StreamStart,
        T_ITEM => Response::Item(Bytes::copy_from_slice(payload)),
        T_STREAM_ERR => Response::StreamErr(remote_error_from(payload)),
        T_END => Response::End,
        other => return Err(RpcError::Network(format!("unknown response tag {other}"))),
    })
}

fn item_stream<Resp: DeserializeOwned + Send + 'static>(
    recv: RecvStream,
    max: usize,
) -> BoxStream<'static, Result<Resp, RpcError>> {
    futures::stream::unfold(Some(recv), move |state| async move {
        let mut recv = state?;
        let item = match read_response(&mut recv, max).await {
            Ok(Response::Item(b)) => {
                let item = decode::<Resp>(&b)
                    .map_err(|e| RpcError::Network(format!("stream item: {}", e.message)));
                return Some((item, Some(recv)));
            }
            Ok(Response::End) => return None,
            Ok(Response::StreamErr(e)) => Err(RpcError::Remote(e)),
            Ok(other) => Err(RpcError::Network(format!("unexpected frame {other:?}"))),
            Err(e) => Err(e),
        };
        // Terminal: yield the error, then end.
        Some((item, None))
    })
    .boxed()
}

// ---------------------------------------------------------------- server side

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(handle_connection(incoming, shared.clone()));
    }
    debug!("rpc accept loop ended");
}

async fn handle_connection(incoming: quinn::Incoming, shared: Arc<Shared>) {
    let peer_addr = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            // Includes clients whose certificate does not chain to our CA.
            debug!(%peer_addr, error = %e, "rpc handshake failed");
            return;
        }
    };
    let peer_name = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .and_then(|certs| certs.first().and_then(|c| peer_common_name(c)));
    let Some(peer_name) = peer_name else {
        conn.close(VarInt::from_u32(CODE_BAD_REQUEST), b"no client identity");
        return;
    };
    loop {
        match conn.accept_bi().await {
            Ok((send, recv)) => {
                let ctx = CallContext {
                    peer_addr,
                    peer_name: peer_name.clone(),
                };
                tokio::spawn(handle_stream(send, recv, ctx, shared.clone()));
            }
            Err(e) => {
                debug!(%peer_addr, peer = %peer_name, error = %e, "rpc connection ended");
                return;
            }
        }
    }
}

async fn read_request(recv: &mut RecvStream, max: usize) -> Result<(String, Bytes), String> {
    let header = read_frame(recv, MAX_HEADER_BYTES)
        .await
        .map_err(|e| format!("bad request header: {e}"))?
        .ok_or("empty request")?;
    let header: RequestHeader =
        decode(&header).map_err(|e| format!("bad request header: {}", e.message))?;
    let body = read_frame(recv, max)
        .await
        .map_err(|e| format!("bad request body: {e}"))?
        .ok_or("missing request body")?;
    Ok((header.service, Bytes::from(body)))
}

/// The frames a duplex caller sends after its request; ends at the caller's finish or at the
/// first broken or oversized frame.
fn input_frames(recv: RecvStream, max: usize) -> BoxStream<'static, Bytes> {
    futures::stream::unfold(recv, move |mut recv| async move {
        match read_frame(&mut recv, max).await {
            Ok(Some(frame)) => Some((Bytes::from(frame), recv)),
            _ => None,
        }
    })
    .boxed()
}

async fn reply_error(send: &mut SendStream, tag: u8, err: &RemoteError) {
    let payload = encode(err).unwrap_or_default();
    let _ = write_frame(send, Some(tag), &payload).await;
}

async fn handle_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    ctx: CallContext,
    shared: Arc<Shared>,
) {
    let max = shared.limits.max_frame_bytes;
    let (service, body) = match timeout(REQUEST_READ_TIMEOUT, read_request(&mut recv, max)).await {
        Err(_) => {
            let _ = send.reset(VarInt::from_u32(CODE_BAD_REQUEST));
            return;
        }
        Ok(Err(msg)) => {
            debug!(peer = %ctx.peer_name, %msg, "rejecting malformed request");
            let _ = recv.stop(VarInt::from_u32(CODE_BAD_REQUEST));
            reply_error(&mut send, T_ERR, &RemoteError::new(msg)).await;
            let _ = send.finish();
            return;
        }
        Ok(Ok(req)) => req,
    };

    if shared.faults.blocks_peer(&ctx.peer_name) {
        // Like a lost packet: no answer. Hold the stream until the caller gives up so it
        // sees a timeout rather than a reset.
        let _ = send.stopped().await;
        return;
    }

    let handler = shared
        .services
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(service.as_str())
        .cloned();
    let peer_name = ctx.peer_name.clone();
    let reply = match handler {
        None => Err(RemoteError::new(format!("unknown service: {service}"))),
        Some(h) => h.call_duplex(ctx, body, input_frames(recv, max)).await,
    };
    match reply {
        Ok(Reply::Unary(b)) => {
            if b.len() > max {
                let e = RemoteError::new(format!("reply of {} bytes exceeds max frame", b.len()));
                reply_error(&mut send, T_ERR, &e).await;
            } else if let Err(e) = write_frame(&mut send, Some(T_OK), &b).await {
                debug!(peer = %peer_name, error = %e, "reply not delivered");
            }
        }
        Err(e) => reply_error(&mut send, T_ERR, &e).await,
        Ok(Reply::Stream(items)) => {
            serve_stream(&mut send, items, &peer_name, &shared).await;
        }
    }
    let _ = send.finish();
}

async fn serve_stream(
    send: &mut SendStream,
    mut items: BoxStream<'static, Result<Bytes, RemoteError>>,
    peer_name: &str,
    shared: &Shared,
) {
    let max = shared.limits.max_frame_bytes;
    if write_frame(send, Some(T_STREAM_START), &[]).await.is_err() {
        return;
    }
    loop {
        // Notice a caller that went away even while the source is idle, so watches
        // are released promptly.
        let stopped = send.stopped();
        let next = tokio::select! {
            item = items.next() => item,
            _ = stopped => return,
        };
        let out = shared.faults.outbound_to(peer_name);
        if out.drop {
            let _ = send.reset(VarInt::from_u32(CODE_DROPPED));
            return;
        }
        if let Some(d) = out.delay {
            tokio::time::sleep(d).await;
        }
        let res = match next {
            None => {
                let _ = write_frame(send, Some(T_END), &[]).await;
                return;
            }
            Some(Err(e)) => {
                reply_error(send, T_STREAM_ERR, &e).await;
                return;
            }
            Some(Ok(b)) if b.len() > max => {
                let e = RemoteError::new(format!(
                    "stream item of {} bytes exceeds max frame",
                    b.len()
                ));
                reply_error(send, T_STREAM_ERR, &e).await;
                return;
            }
            Some(Ok(b)) => write_frame(send, Some(T_ITEM), &b).await,
        };
        if let Err(e) = res {
            debug!(peer = %peer_name, error = %e, "stream consumer went away");
            return;
        }
    }
}

#[cfg(test)]
#[path = "rpc_tests.rs"]
mod tests;
