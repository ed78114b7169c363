//! `pods/exec` over WebSocket, as kubectl (`v5.channel.k8s.io`) and the Python client
//! (`v4.channel.k8s.io`) speak it: every binary message starts with its channel — 0 stdin,
//! 1 stdout, 2 stderr, 3 error (a `Status` with the exit code), 4 terminal size (JSON) — and
//! in v5 the client closes its stdin with `[255, 0]`. The command runs on the pod's node; the
//! session is relayed through [`PodProxy::exec`]. SPDY, the older transport, is not served:
//! kubectl 1.33 falls back to it only when the WebSocket upgrade fails.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::Role;

use crate::pods::{ExecInput, ExecOutput, ExecRequest, PodProxy};
use crate::status::ApiError;

/// The subprotocols served, most preferred first.
const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// The exec options of the query (`command` repeats, one argument each).
#[derive(Debug, Default, PartialEq)]
struct ExecQuery {
    command: Vec<String>,
    container: Option<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
}

fn parse_query(query: &str) -> ExecQuery {
    let mut q = ExecQuery::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let on = matches!(v.as_ref(), "true" | "True" | "1");
        match k.as_ref() {
            "command" => q.command.push(v.into_owned()),
            "container" => q.container = Some(v.into_owned()),
            "stdin" => q.stdin = on,
            "stdout" => q.stdout = on,
            "stderr" => q.stderr = on,
            "tty" => q.tty = on,
            _ => {}
        }
    }
    q
}

/// The subprotocol to answer with, from the client's `Sec-WebSocket-Protocol` offers.
fn choose_protocol(headers: &HeaderMap) -> Option<&'static str> {
    let offered: Vec<String> = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_owned())
        .collect();
    PROTOCOLS
        .into_iter()
        .find(|p| offered.iter().any(|o| o == p))
}

fn is_websocket(headers: &HeaderMap) -> bool {
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Serves `.../pods/NAME/exec` for the stored `pod`.
pub async fn exec(
    proxy: Option<Arc<dyn PodProxy>>,
    pod: &Value,
    mut request: Request,
) -> Result<Response, ApiError> {
    let q = parse_query(request.uri().query().unwrap_or(""));
    let container = crate::pods::pick_container(
        pod,
        q.container.clone(),
        &crate::pods::names(pod, "containers"),
    )?;
    if q.command.is_empty() {
        return Err(ApiError::bad_request(
            "you must specify at least one command for the container",
        ));
    }
    if !(q.stdin || q.stdout || q.stderr) {
        return Err(ApiError::bad_request(
            "you must specify at least one of stdin, stdout, stderr",
        ));
    }
    let node = crate::pods::node_of(pod, &container)?.to_owned();
    let headers = request.headers();
    if !is_websocket(headers) {
        return Err(ApiError::bad_request(
            "pods/exec is served over WebSocket (v5.channel.k8s.io or v4.channel.k8s.io); SPDY is not supported",
        ));
    }
    let protocol = choose_protocol(headers).ok_or_else(|| {
        ApiError::bad_request(format!(
            "none of the offered WebSocket subprotocols is supported; use one of {PROTOCOLS:?}"
        ))
    })?;
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::bad_request("the WebSocket upgrade has no Sec-WebSocket-Key"))?;
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let proxy = proxy.ok_or_else(|| ApiError::unavailable("no kubelet proxy on this node"))?;

    // The command starts before the upgrade is answered, so an error starting it is an
    // ordinary HTTP error the client shows ("unable to upgrade connection: …").
    let (input_tx, input_rx) = futures::channel::mpsc::unbounded::<ExecInput>();
    let req = ExecRequest {
        namespace: crate::pods::str_of(pod, "/metadata/namespace"),
        pod: crate::pods::str_of(pod, "/metadata/name"),
        uid: crate::pods::str_of(pod, "/metadata/uid"),
        container,
        command: q.command.clone(),
        stdin: q.stdin,
        tty: q.tty,
    };
    let mut output = proxy
        .exec(&node, req, input_rx.boxed())
        .await
        .map_err(ApiError::bad_request)?;
    match output.next().await {
        Some(ExecOutput::Started) => {}
        Some(ExecOutput::Error(message)) => return Err(ApiError::bad_request(message)),
        _ => {
            return Err(ApiError::internal(
                "the exec session ended before it started",
            ));
        }
    }

    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "exec upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        relay(ws, output, input_tx, q).await;
    });
    let mut resp = (StatusCode::SWITCHING_PROTOCOLS, Body::empty()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(protocol),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok(resp)
}

/// The error channel's message at the end: success, or the exit code as kubectl reads it.
fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command [{}], exit code {code}",
            command.join(" ")
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

fn framed(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

/// What a client message means for the command, if anything.
fn input_of(data: &[u8]) -> Option<ExecInput> {
    let (&channel, rest) = data.split_first()?;
    match channel {
        STDIN => Some(ExecInput::Stdin(rest.to_vec())),
        RESIZE => {
            let size: Value = serde_json::from_slice(rest).ok()?;
            Some(ExecInput::Resize {
                width: size.get("Width")?.as_u64()?.try_into().ok()?,
                height: size.get("Height")?.as_u64()?.try_into().ok()?,
            })
        }
        CLOSE if rest.first() == Some(&STDIN) => Some(ExecInput::CloseStdin),
        _ => None,
    }
}

/// Copies the session both ways until the command ends (or the client goes).
async fn relay<S>(
    ws: WebSocketStream<S>,
    output: impl futures::Stream<Item = ExecOutput> + Unpin,
    input: futures::channel::mpsc::UnboundedSender<ExecInput>,
    q: ExecQuery,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut source) = ws.split();
    let reader = async move {
        while let Some(Ok(msg)) = source.next().await {
            let data = match msg {
                Message::Binary(b) => b.to_vec(),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Close(_) => break,
                _ => continue,
            };
            if let Some(i) = input_of(&data)
                && input.unbounded_send(i).is_err()
            {
                break;
            }
        }
        // The client is gone or closed its side: its stdin is over.
        let _ = input.unbounded_send(ExecInput::CloseStdin);
        std::future::pending::<()>().await;
    };
    let writer = async move {
        let mut output = output;
        while let Some(out) = output.next().await {
            let msg = match out {
                ExecOutput::Stdout(d) if q.stdout => framed(STDOUT, &d),
                ExecOutput::Stderr(d) if q.stderr => framed(STDERR, &d),
                ExecOutput::Stdout(_) | ExecOutput::Stderr(_) | ExecOutput::Started => continue,
                ExecOutput::Exit(code) => {
                    let status = exit_status(&q.command, code);
                    framed(ERROR, status.to_string().as_bytes())
                }
                ExecOutput::Error(message) => {
                    let status = json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500});
                    framed(ERROR, status.to_string().as_bytes())
                }
            };
            let last = matches!(msg.clone().into_data().first(), Some(&ERROR));
            if sink.send(msg).await.is_err() {
                return;
            }
            if last {
                break;
            }
        }
        // A normal closure (1000): kubectl reports a close without a code as an error.
        let close = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "".into(),
        };
        let _ = sink.send(Message::Close(Some(close))).await;
        let _ = sink.close().await;
    };
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_and_protocol_negotiation() {
        let q = parse_query(
            "command=sh&command=-c&command=echo%20hi&container=main&stdin=true&stdout=true&tty=false",
        );
        assert_eq!(q.command, ["sh", "-c", "echo hi"]);
        assert_eq!(q.container.as_deref(), Some("main"));
        assert!(q.stdin && q.stdout && !q.stderr && !q.tty);

        let mut h = HeaderMap::new();
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("v4.channel.k8s.io, v5.channel.k8s.io"),
        );
        assert_eq!(choose_protocol(&h), Some("v5.channel.k8s.io"));
        h.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static("channel.k8s.io"),
        );
        assert_eq!(choose_protocol(&h), None);
    }

    #[test]
    fn client_frames_and_exit_status() {
        assert_eq!(
            input_of(b"\x00ls\n"),
            Some(ExecInput::Stdin(b"ls\n".to_vec()))
        );
        assert_eq!(
            input_of(
                br#"{"Width":80,"Height":24}"#
                    .iter()
                    .fold(vec![4u8], |mut v, b| {
                        v.push(*b);
                        v
                    })
                    .as_slice()
            ),
            Some(ExecInput::Resize {
                width: 80,
                height: 24
            })
        );
        assert_eq!(input_of(&[255, 0]), Some(ExecInput::CloseStdin));
        assert_eq!(input_of(&[]), None);
        let s = exit_status(&["sh".into()], 3);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(s["details"]["causes"][0]["message"], "3");
        assert_eq!(exit_status(&[], 0)["status"], "Success");
    }
}
