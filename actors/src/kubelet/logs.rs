//! The kubelet's `kubelet` RPC service: container logs for `kubectl logs`, read from the
//! runtime's CRI-format log files (`<RFC3339Nano> <stream> <P|F> <text>` per line) and
//! streamed back to whichever node's API asked.

use std::io::{Read as _, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use flotilla_api::pods::{ExecRequest, LogRequest};
use flotilla_mesh::{CallContext, RemoteError, Reply, Service};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde::{Deserialize, Serialize};

use crate::runtime::{ContainerState, ContainerStatus, Runtime};

/// The RPC service name.
pub const SERVICE: &str = "kubelet";

/// Requests the `kubelet` service answers.
#[derive(Debug, Serialize, Deserialize)]
pub enum KubeletRequest {
    Logs(LogRequest),
    /// Duplex: the caller's [`ExecInput`](flotilla_api::pods::ExecInput) frames follow.
    Exec(ExecRequest),
}

/// One frame of a log stream: a chunk of text, or why there is none.
pub type LogFrame = Result<Vec<u8>, String>;

pub struct KubeletService {
    runtime: Arc<dyn Runtime>,
}

impl KubeletService {
    pub fn new(runtime: Arc<dyn Runtime>) -> KubeletService {
        KubeletService { runtime }
    }
}

/// The container a log request means: the current attempt, or the one before (`previous`).
async fn find(rt: &dyn Runtime, req: &LogRequest) -> Result<ContainerStatus, String> {
    let sandboxes = rt.list_sandboxes().await.map_err(|e| e.to_string())?;
    let sandbox = sandboxes
        .iter()
        .filter(|s| s.config.pod_uid == req.uid)
        .max_by_key(|s| s.created_at)
        .ok_or_else(|| {
            format!(
                "container \"{}\" in pod \"{}\" is waiting to start: ContainerCreating",
                req.container, req.pod
            )
        })?;
    let mut attempts: Vec<ContainerStatus> = rt
        .list_containers()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| c.sandbox_id == sandbox.id && c.name == req.container)
        .collect();
    attempts.sort_by_key(|c| c.attempt);
    let pick = if req.previous {
        attempts.len().checked_sub(2).and_then(|i| attempts.get(i))
    } else {
        attempts.last()
    };
    pick.cloned().ok_or_else(|| {
        if req.previous {
            format!(
                "previous terminated container \"{}\" in pod \"{}\" not found",
                req.container, req.pod
            )
        } else {
            format!(
                "container \"{}\" in pod \"{}\" is waiting to start: ContainerCreating",
                req.container, req.pod
            )
        }
    })
}

/// Seconds since the epoch of a log line's RFC 3339 timestamp (whole seconds).
fn line_secs(ts: &str) -> Option<u64> {
    flotilla_api::parse_rfc3339(ts.get(..19).map(|s| format!("{s}Z")).as_deref()?)
}

/// Turns CRI lines into what the user sees.
fn render(line: &str, timestamps: bool, since: Option<u64>) -> Option<String> {
    let mut parts = line.splitn(4, ' ');
    let (ts, _stream, tag, text) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next().unwrap_or(""),
    );
    if since.is_some_and(|s| line_secs(ts).is_some_and(|t| t < s)) {
        return None;
    }
    let end = if tag == "P" { "" } else { "\n" };
    Some(if timestamps {
        format!("{ts} {text}{end}")
    } else {
        format!("{text}{end}")
    })
}

struct Follow {
    rt: Arc<dyn Runtime>,
    id: String,
    path: PathBuf,
    offset: u64,
    pending: String,
    timestamps: bool,
    done: bool,
    budget: Option<u64>,
}

fn read_from(path: &PathBuf, offset: &mut u64) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    if len < *offset {
        // Rotated: the current file starts over.
        *offset = 0;
    }
    f.seek(SeekFrom::Start(*offset))?;
    let mut buf = Vec::new();
    // Bounded reads: a huge log is sent in pieces.
    f.take(1 << 20).read_to_end(&mut buf)?;
    *offset += buf.len() as u64;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

fn log_stream(
    rt: Arc<dyn Runtime>,
    container: ContainerStatus,
    req: LogRequest,
) -> futures::stream::BoxStream<'static, Result<Bytes, RemoteError>> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let since = req
        .since_seconds
        .map(|s| now.saturating_sub(s.max(0) as u64));
    // The backlog first: the whole file, then `tailLines` of it.
    let mut offset = 0;
    let backlog = read_from(&container.log_path, &mut offset).unwrap_or_default();
    let complete = backlog.rfind('\n').map_or(0, |i| i + 1);
    let (done_part, rest) = backlog.split_at(complete);
    let mut lines: Vec<String> = done_part
        .lines()
        .filter_map(|l| render(l, req.timestamps, since))
        .collect();
    if let Some(n) = req.tail_lines {
        let keep = n.max(0) as usize;
        if lines.len() > keep {
            lines.drain(..lines.len() - keep);
        }
    }
    let mut first: String = lines.concat();
    let mut budget = req.limit_bytes.map(|b| b.max(0) as u64);
    if let Some(b) = budget {
        first.truncate(b as usize);
        budget = Some(b.saturating_sub(first.len() as u64));
    }
    let head = futures::stream::iter([Ok(first)]);
    let follow = Follow {
        rt,
        id: container.id.clone(),
        path: container.log_path.clone(),
        offset,
        pending: rest.to_owned(),
        timestamps: req.timestamps,
        done: !req.follow || budget == Some(0),
        budget,
    };
    let tail = futures::stream::unfold(follow, |mut f| async move {
        loop {
            if f.done {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            let exited =
                f.rt.container_status(&f.id)
                    .await
                    .map(|s| s.state == ContainerState::Exited)
                    .unwrap_or(true);
            let new = read_from(&f.path, &mut f.offset).unwrap_or_default();
            f.pending.push_str(&new);
            let complete = f.pending.rfind('\n').map_or(0, |i| i + 1);
            let chunk: String = f.pending[..complete]
                .lines()
                .filter_map(|l| render(l, f.timestamps, None))
                .collect();
            f.pending.drain(..complete);
            if exited && new.is_empty() {
                f.done = true;
            }
            if !chunk.is_empty() {
                let mut chunk = chunk;
                if let Some(b) = f.budget {
                    chunk.truncate(b as usize);
                    f.budget = Some(b.saturating_sub(chunk.len() as u64));
                    if f.budget == Some(0) {
                        f.done = true;
                    }
                }
                return Some((Ok(chunk), f));
            }
        }
    });
    head.chain(tail)
        .filter(|r: &Result<String, String>| {
            futures::future::ready(r.as_ref().is_ok_and(|s| !s.is_empty()) || r.is_err())
        })
        .map(|r| {
            let frame: LogFrame = r.map(String::into_bytes);
            flotilla_mesh::encode(&frame)
        })
        .boxed()
}

impl Service for KubeletService {
    fn call(
        &self,
        _ctx: CallContext,
        body: Bytes,
    ) -> BoxFuture<'static, Result<Reply, RemoteError>> {
        self.call_duplex(_ctx, body, futures::stream::empty().boxed())
    }

    fn call_duplex(
        &self,
        _ctx: CallContext,
        body: Bytes,
        input: futures::stream::BoxStream<'static, Bytes>,
    ) -> BoxFuture<'static, Result<Reply, RemoteError>> {
        let rt = self.runtime.clone();
        async move {
            let req: KubeletRequest = flotilla_mesh::decode(&body)?;
            match req {
                KubeletRequest::Exec(req) => Ok(Reply::Stream(
                    crate::kubelet::exec::serve(rt, req, input).await,
                )),
                KubeletRequest::Logs(req) => match find(rt.as_ref(), &req).await {
                    Ok(container) => Ok(Reply::Stream(log_stream(rt, container, req))),
                    // The first frame carries the error, so the API can answer with it.
                    Err(message) => {
                        let frame: LogFrame = Err(message);
                        let bytes = flotilla_mesh::encode(&frame);
                        Ok(Reply::Stream(futures::stream::iter([bytes]).boxed()))
                    }
                },
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_lines_render_like_kubectl_logs() {
        let full = "2026-01-02T03:04:05.123456789Z stdout F hello world";
        assert_eq!(render(full, false, None).as_deref(), Some("hello world\n"));
        assert_eq!(
            render(full, true, None).as_deref(),
            Some("2026-01-02T03:04:05.123456789Z hello world\n")
        );
        let partial = "2026-01-02T03:04:05Z stderr P abc";
        assert_eq!(render(partial, false, None).as_deref(), Some("abc"));
        // Older than `since`: left out.
        assert_eq!(render(full, false, Some(u64::MAX)), None);
    }
}
