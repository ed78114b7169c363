//! Liveness, readiness and startup probes: exec (in the container), httpGet and tcpSocket
//! (from inside the pod's network namespace when the container is isolated, so a pod without a
//! routable IP is still probed on its own localhost), with Kubernetes' timing fields.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::runtime::Runtime;

/// One probe of one container, and its running tally.
#[derive(Debug, Default, Clone)]
pub struct ProbeState {
    pub successes: u32,
    pub failures: u32,
    /// The last verdict once a threshold was crossed (None until then).
    pub passing: Option<bool>,
    last_run: Option<Instant>,
}

/// What a probe spec says about timing.
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(probe: &Value) -> Timing {
    let n = |k: &str, d: u64| probe.get(k).and_then(Value::as_u64).unwrap_or(d);
    Timing {
        initial_delay: Duration::from_secs(n("initialDelaySeconds", 0)),
        period: Duration::from_secs(n("periodSeconds", 10).max(1)),
        timeout: Duration::from_secs(n("timeoutSeconds", 1).max(1)),
        success_threshold: n("successThreshold", 1).max(1) as u32,
        failure_threshold: n("failureThreshold", 3).max(1) as u32,
    }
}

/// The port of an httpGet/tcpSocket probe: a number, or a named container port.
fn port(handler: &Value, container: &Value) -> Option<u16> {
    match handler.get("port")? {
        Value::Number(n) => n.as_u64().and_then(|p| u16::try_from(p).ok()),
        Value::String(name) => container
            .get("ports")?
            .as_array()?
            .iter()
            .find(|p| p.get("name").and_then(Value::as_str) == Some(name))?
            .get("containerPort")?
            .as_u64()
            .and_then(|p| u16::try_from(p).ok()),
        _ => None,
    }
}

/// Runs a blocking network check, inside the network namespace of `pid` when given.
async fn in_netns<T: Send + 'static>(
    pid: Option<u32>,
    timeout: Duration,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let netns = pid.map(|pid| std::path::PathBuf::from(format!("/proc/{pid}/ns/net")));
    in_netns_path(netns, timeout, f).await
}

/// Runs blocking network work inside the network namespace at `netns` (a `/proc/PID/ns/net`
/// or `/run/netns/NAME` file) when given. Sockets it creates stay in that namespace.
pub(super) async fn in_netns_path<T: Send + 'static>(
    netns: Option<std::path::PathBuf>,
    timeout: Duration,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    // A dedicated thread: entering a namespace changes only the calling thread.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = (|| {
            if let Some(path) = netns {
                let ns = std::fs::File::open(path)?;
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::other)?;
            }
            f()
        })();
        let _ = tx.send(result);
    });
    match tokio::time::timeout(timeout + Duration::from_millis(200), rx).await {
        Ok(Ok(r)) => r,
        _ => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "timed out",
        )),
    }
}

fn http_get(addr: SocketAddr, path: &str, host: &str, timeout: Duration) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}

/// Runs an `exec` handler in the container to completion.
pub async fn exec(
    rt: &dyn Runtime,
    container_id: &str,
    exec: &Value,
    timeout: Duration,
) -> crate::runtime::Result<crate::runtime::ExecOutput> {
    let cmd: Vec<String> = exec
        .get("command")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    rt.exec_sync(container_id, cmd, timeout).await
}

/// The address network handlers connect to: in the pod's own namespace its localhost is the
/// pod; otherwise the pod IP or the host.
fn target_host(isolated_pid: Option<u32>, pod_ip: Option<&str>) -> String {
    if isolated_pid.is_some() {
        "127.0.0.1".to_owned()
    } else {
        pod_ip.unwrap_or("127.0.0.1").to_owned()
    }
}

/// Runs an `httpGet` handler (probe or lifecycle hook); returns the HTTP status code.
pub async fn http_get_handler(
    h: &Value,
    container: &Value,
    isolated_pid: Option<u32>,
    pod_ip: Option<&str>,
    timeout: Duration,
) -> std::io::Result<u16> {
    let port = port(h, container).ok_or_else(|| std::io::Error::other("invalid port"))?;
    let target = h
        .get("host")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| target_host(isolated_pid, pod_ip));
    let path = h
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or("/")
        .to_owned();
    in_netns(isolated_pid, timeout, move || {
        let addr = (target.as_str(), port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        http_get(addr, &path, &target, timeout)
    })
    .await
}

/// Runs a probe once: true for success. `isolated_pid` is the container's process when it
/// has its own network namespace; `pod_ip` the address to use otherwise.
pub async fn run(
    rt: &dyn Runtime,
    container_id: &str,
    container: &Value,
    probe: &Value,
    isolated_pid: Option<u32>,
    pod_ip: Option<&str>,
) -> bool {
    let t = timing(probe);
    if let Some(e) = probe.get("exec") {
        return matches!(exec(rt, container_id, e, t.timeout).await, Ok(out) if out.exit_code == 0);
    }
    if let Some(h) = probe.get("httpGet") {
        let code = http_get_handler(h, container, isolated_pid, pod_ip, t.timeout).await;
        return code.is_ok_and(|c| (200..400).contains(&c));
    }
    if let Some(tcp) = probe.get("tcpSocket") {
        let Some(port) = port(tcp, container) else {
            return false;
        };
        let host = target_host(isolated_pid, pod_ip);
        let timeout = t.timeout;
        return in_netns(isolated_pid, timeout, move || {
            let addr: SocketAddr = format!("{host}:{port}")
                .parse()
                .map_err(std::io::Error::other)?;
            TcpStream::connect_timeout(&addr, timeout).map(|_| ())
        })
        .await
        .is_ok();
    }
    false
}

impl ProbeState {
    /// Whether it is time to run the probe again.
    pub fn due(&self, t: &Timing, running_for: Duration) -> bool {
        running_for >= t.initial_delay && self.last_run.is_none_or(|r| r.elapsed() >= t.period)
    }

    /// Records one result; returns the verdict when it changed.
    pub fn record(&mut self, t: &Timing, ok: bool) -> Option<bool> {
        self.last_run = Some(Instant::now());
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let verdict = if self.successes >= t.success_threshold {
            Some(true)
        } else if self.failures >= t.failure_threshold {
            Some(false)
        } else {
            None
        };
        match verdict {
            Some(v) if self.passing != Some(v) => {
                self.passing = Some(v);
                Some(v)
            }
            _ => None,
        }
    }
}
