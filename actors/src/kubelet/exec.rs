//! `exec` sessions for the `kubelet` RPC service: a command in a running container, its stdin
//! and terminal size fed from the caller's input frames, its output and exit code streamed back.

use std::sync::Arc;

use bytes::Bytes;
use flotilla_api::pods::{ExecInput, ExecOutput, ExecRequest};
use flotilla_mesh::RemoteError;
use futures::stream::BoxStream;
use futures::{FutureExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::mpsc;

use crate::runtime::{ContainerState, Runtime};

/// Starts the session; an error before the command runs is the stream's only item.
pub async fn serve(
    rt: Arc<dyn Runtime>,
    req: ExecRequest,
    input: BoxStream<'static, Bytes>,
) -> BoxStream<'static, Result<Bytes, RemoteError>> {
    let (tx, rx) = mpsc::channel::<ExecOutput>(16);
    match start(rt.as_ref(), &req).await {
        Err(message) => {
            let _ = tx.try_send(ExecOutput::Error(message));
        }
        Ok(session) => {
            let _ = tx.try_send(ExecOutput::Started);
            tokio::spawn(run(session, input, tx));
        }
    }
    futures::stream::unfold(rx, |mut rx| async move {
        let out = rx.recv().await?;
        Some((flotilla_mesh::encode(&out), rx))
    })
    .boxed()
}

async fn start(rt: &dyn Runtime, req: &ExecRequest) -> Result<crate::runtime::ExecSession, String> {
    let not_running = || {
        format!(
            "unable to upgrade connection: container not found (\"{}\")",
            req.container
        )
    };
    let sandboxes = rt.list_sandboxes().await.map_err(|e| e.to_string())?;
    let sandbox = sandboxes
        .iter()
        .filter(|s| s.config.pod_uid == req.uid)
        .max_by_key(|s| s.created_at)
        .ok_or_else(not_running)?;
    let container = rt
        .list_containers()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|c| c.sandbox_id == sandbox.id && c.name == req.container)
        .max_by_key(|c| c.attempt)
        .filter(|c| c.state == ContainerState::Running)
        .ok_or_else(not_running)?;
    rt.exec(&container.id, req.command.clone(), req.stdin, req.tty)
        .await
        .map_err(|e| format!("error executing command in container: {e}"))
}

/// Pumps the session until the command exits or the caller goes away (the receiver closes),
/// which drops the session and so cancels the command.
async fn run(
    session: crate::runtime::ExecSession,
    input: BoxStream<'static, Bytes>,
    tx: mpsc::Sender<ExecOutput>,
) {
    let crate::runtime::ExecSession {
        stdin,
        stdout,
        stderr,
        resize,
        exit,
    } = session;
    let feed = feed(input, stdin, resize).fuse();
    let output = async {
        let out = pump(stdout, &tx, ExecOutput::Stdout);
        match stderr {
            Some(err) => {
                tokio::join!(out, pump(err, &tx, ExecOutput::Stderr));
            }
            None => out.await,
        }
        let last = match exit.await {
            Ok(code) => ExecOutput::Exit(code),
            Err(e) => ExecOutput::Error(e.to_string()),
        };
        let _ = tx.send(last).await;
    };
    tokio::pin!(feed);
    tokio::pin!(output);
    loop {
        tokio::select! {
            () = &mut output => return,
            () = tx.closed() => return,
            () = &mut feed => {}
        }
    }
}

/// Copies the caller's input into the command: stdin bytes (closing stdin when asked or when
/// the input ends) and terminal sizes.
async fn feed(
    mut input: BoxStream<'static, Bytes>,
    mut stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    resize: Option<Box<dyn Fn(u16, u16) + Send + Sync>>,
) {
    while let Some(frame) = input.next().await {
        match flotilla_mesh::decode::<ExecInput>(&frame) {
            Ok(ExecInput::Stdin(data)) => {
                if let Some(w) = stdin.as_mut()
                    && (w.write_all(&data).await.is_err() || w.flush().await.is_err())
                {
                    stdin = None;
                }
            }
            Ok(ExecInput::CloseStdin) => {
                if let Some(mut w) = stdin.take() {
                    let _ = w.shutdown().await;
                }
            }
            Ok(ExecInput::Resize { width, height }) => {
                if let Some(resize) = &resize {
                    resize(width, height);
                }
            }
            Err(e) => tracing::debug!(error = %e.message, "undecodable exec input"),
        }
    }
    if let Some(mut w) = stdin.take() {
        let _ = w.shutdown().await;
    }
    // The input is over; the output goes on.
    std::future::pending::<()>().await;
}

async fn pump(
    mut from: Box<dyn AsyncRead + Send + Unpin>,
    tx: &mpsc::Sender<ExecOutput>,
    wrap: fn(Vec<u8>) -> ExecOutput,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tx.send(wrap(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
        }
    }
}
