//! `pods/log`: the API finds the pod's node and streams the container's log from that node's
//! kubelet, whichever node the client talks to. How a node reaches another node's kubelet is
//! the node daemon's business ([`PodProxy`]); the API only knows the request and the stream.

use crate::At;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::status::ApiError;

/// What `kubectl logs` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LogRequest {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub limit_bytes: Option<i64>,
}

/// What `kubectl exec` asks for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExecRequest {
    pub namespace: String,
    pub pod: String,
    pub uid: String,
    pub container: String,
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
}

/// From the client to an exec'd command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExecInput {
    Stdin(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The client's stdin ended.
    CloseStdin,
    Resize {
        width: u16,
        height: u16,
    },
}

/// From an exec'd command to the client: `Started` or `Error` first; the stream ends after
/// `Exit` or `Error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ExecOutput {
    Started,
    Stdout(#[serde(with = "serde_bytes")] Vec<u8>),
    Stderr(#[serde(with = "serde_bytes")] Vec<u8>),
    Exit(i32),
    /// The command could not be run, or the session broke.
    Error(String),
}

/// Reaches the kubelet of another node (or this one).
pub trait PodProxy: Send + Sync + 'static {
    /// Runs a command in a container of a pod bound to `node`; `input` carries the client's
    /// stdin and terminal sizes.
    fn exec(
        &self,
        node: &str,
        req: ExecRequest,
        input: BoxStream<'static, ExecInput>,
    ) -> BoxFuture<'static, Result<BoxStream<'static, ExecOutput>, String>>;

    /// The log of a container of a pod bound to `node`, as a stream of text chunks; an
    /// error message (not found, not started) comes back as `Err` before the stream.
    fn logs(
        &self,
        node: &str,
        req: LogRequest,
    ) -> BoxFuture<'static, Result<BoxStream<'static, Result<Bytes, String>>, String>>;
}

/// The query of a log request.
#[derive(Debug, Default)]
pub struct LogQuery {
    pub container: Option<String>,
    pub follow: Option<String>,
    pub previous: Option<String>,
    pub timestamps: Option<String>,
    pub tail_lines: Option<i64>,
    pub since_seconds: Option<i64>,
    pub limit_bytes: Option<i64>,
}

fn flag(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "True" | "1"))
}

pub(crate) fn names(pod: &Value, key: &str) -> Vec<String> {
    pod.at(&format!("/spec/{key}"))
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter_map(|c| c.get("name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The container a request means: the one asked for (which must be one of `allowed`), the
/// pod's default-container annotation, or its only container.
pub(crate) fn pick_container(
    pod: &Value,
    requested: Option<String>,
    allowed: &[String],
) -> Result<String, ApiError> {
    let name = pod
        .at("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    let containers = names(pod, "containers");
    let default = pod
        .at("/metadata/annotations/kubectl.kubernetes.io~1default-container")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let container = match (requested.filter(|c| !c.is_empty()), default) {
        (Some(c), _) => c,
        (None, Some(d)) => d,
        (None, None) if containers.len() == 1 => containers[0].clone(),
        (None, None) => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            )));
        }
    };
    if !allowed.contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    Ok(container)
}

/// The node a pod is bound to.
pub(crate) fn node_of<'a>(pod: &'a Value, container: &str) -> Result<&'a str, ApiError> {
    pod.at("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            let name = pod
                .at("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            ApiError::bad_request(format!(
                "container \"{container}\" in pod \"{name}\" is waiting to start: the pod is not bound to a node"
            ))
        })
}

pub(crate) fn str_of(pod: &Value, pointer: &str) -> String {
    pod.at(pointer)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// Serves `GET .../pods/NAME/log` for the stored `pod`.
pub async fn logs(
    proxy: Option<&dyn PodProxy>,
    pod: &Value,
    query: LogQuery,
) -> Result<Response, ApiError> {
    let all: Vec<String> = names(pod, "initContainers")
        .into_iter()
        .chain(names(pod, "containers"))
        .collect();
    let container = pick_container(pod, query.container, &all)?;
    let node = node_of(pod, &container)?;
    let proxy = proxy.ok_or_else(|| ApiError::unavailable("no kubelet proxy on this node"))?;
    let req = LogRequest {
        namespace: str_of(pod, "/metadata/namespace"),
        pod: str_of(pod, "/metadata/name"),
        uid: str_of(pod, "/metadata/uid"),
        container,
        follow: flag(&query.follow),
        previous: flag(&query.previous),
        timestamps: flag(&query.timestamps),
        tail_lines: query.tail_lines,
        since_seconds: query.since_seconds,
        limit_bytes: query.limit_bytes,
    };
    let stream = proxy.logs(node, req).await.map_err(ApiError::bad_request)?;
    // A failure mid-stream ends the response; what was sent stays sent.
    let body = stream
        .take_while(|r| futures::future::ready(r.is_ok()))
        .map(|r| r.map_err(std::io::Error::other));
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(resp)
}
