//! Runs a cluster of real `flotilla node` processes on loopback: for `flotilla up`, for the
//! process-level tests and for the benchmarks.
//!
//! Layout of a data directory:
//! ```text
//! DATA_DIR/cluster.json     node names and ports (reused when the cluster is started again)
//! DATA_DIR/ca.pem, ca.key   the cluster CA
//! DATA_DIR/kubeconfig       one context per node
//! DATA_DIR/<node>/          the node's data dir: tls/, raft/, node.pid, node.log
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use flotilla_consensus::StoreClient;
use flotilla_mesh::{ClusterCa, FaultRules, Identity, RpcEndpoint};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::http::HttpClient;
use crate::kubeconfig;
use crate::status::{FAULTS_PATH, NodeStatus, STATUS_PATH};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeSpec {
    pub name: String,
    pub api_port: u16,
    pub rpc_port: u16,
    pub gossip_port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterLayout {
    pub host: String,
    pub nodes: Vec<NodeSpec>,
}

impl ClusterLayout {
    /// Node i (from 0) gets API port base+i, RPC base+100+i and gossip base+200+i.
    pub fn new(nodes: usize, base_port: u16) -> ClusterLayout {
        ClusterLayout {
            host: "127.0.0.1".into(),
            nodes: (0..nodes)
                .map(|i| NodeSpec {
                    name: format!("node-{}", i + 1),
                    api_port: base_port + i as u16,
                    rpc_port: base_port + 100 + i as u16,
                    gossip_port: base_port + 200 + i as u16,
                })
                .collect(),
        }
    }

    pub fn api_url(&self, i: usize) -> String {
        format!("http://{}:{}", self.host, self.nodes[i].api_port)
    }

    pub fn rpc_addr(&self, i: usize) -> anyhow::Result<SocketAddr> {
        Ok(format!("{}:{}", self.host, self.nodes[i].rpc_port).parse()?)
    }

    pub fn gossip_addr(&self, i: usize) -> String {
        format!("{}:{}", self.host, self.nodes[i].gossip_port)
    }
}

/// Settings for a local cluster.
#[derive(Debug, Clone)]
pub struct LocalClusterConfig {
    pub binary: PathBuf,
    pub data_dir: PathBuf,
    pub nodes: usize,
    pub base_port: u16,
    pub voters: usize,
    /// Extra flags for every node (e.g. `--chaos`, timing flags).
    pub extra_args: Vec<String>,
}

pub struct LocalCluster {
    pub config: LocalClusterConfig,
    pub layout: ClusterLayout,
    children: Vec<Option<Child>>,
    http: HttpClient,
    ca: ClusterCa,
}

impl LocalCluster {
    /// Creates (or reuses) the data directory, CA, node certificates and layout.
    pub fn prepare(config: LocalClusterConfig) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let layout_path = config.data_dir.join("cluster.json");
        let layout = if layout_path.exists() {
            let layout: ClusterLayout = serde_json::from_slice(&std::fs::read(&layout_path)?)
                .with_context(|| format!("reading {}", layout_path.display()))?;
            if layout.nodes.len() != config.nodes {
                tracing::warn!(
                    existing = layout.nodes.len(),
                    requested = config.nodes,
                    "the data directory holds a cluster of another size; starting it as it is"
                );
            }
            layout
        } else {
            let layout = ClusterLayout::new(config.nodes, config.base_port);
            std::fs::write(&layout_path, serde_json::to_vec_pretty(&layout)?)?;
            layout
        };
        let ca = if config.data_dir.join("ca.pem").exists() {
            ClusterCa::load_files(&config.data_dir)?
        } else {
            let ca = ClusterCa::generate("flotilla")?;
            ca.write_files(&config.data_dir)?;
            ca
        };
        for node in &layout.nodes {
            let tls = config.data_dir.join(&node.name).join("tls");
            if !tls.join("node.pem").exists() {
                std::fs::create_dir_all(&tls)?;
                ca.issue(&node.name)?.write(&tls, "node")?;
            }
        }
        if !config.data_dir.join("admin.pem").exists() {
            // The kubeconfig's user: a client certificate from the cluster CA.
            ca.issue("flotilla-admin")?
                .write(&config.data_dir, "admin")?;
        }
        let servers: Vec<(String, String)> = (0..layout.nodes.len())
            .map(|i| (layout.nodes[i].name.clone(), layout.api_url(i)))
            .collect();
        std::fs::write(
            config.data_dir.join("kubeconfig"),
            kubeconfig::render(
                &servers,
                Some(&config.data_dir.join("ca.pem").canonicalize()?),
            ),
        )?;
        let children = layout.nodes.iter().map(|_| None).collect();
        Ok(LocalCluster {
            config,
            layout,
            children,
            http: HttpClient::default(),
            ca,
        })
    }

    pub fn len(&self) -> usize {
        self.layout.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.layout.nodes.is_empty()
    }

    pub fn node_dir(&self, i: usize) -> PathBuf {
        self.config.data_dir.join(&self.layout.nodes[i].name)
    }

    pub fn name(&self, i: usize) -> &str {
        &self.layout.nodes[i].name
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.config.data_dir.join("kubeconfig")
    }

    /// The command-line arguments of node i.
    pub fn node_args(&self, i: usize) -> Vec<String> {
        let spec = &self.layout.nodes[i];
        let host = &self.layout.host;
        let mut args = vec![
            "node".to_owned(),
            "--name".to_owned(),
            spec.name.clone(),
            "--data-dir".to_owned(),
            self.node_dir(i).display().to_string(),
            "--bind-addr".to_owned(),
            host.clone(),
            "--api-port".to_owned(),
            spec.api_port.to_string(),
            "--rpc-port".to_owned(),
            spec.rpc_port.to_string(),
            "--gossip-port".to_owned(),
            spec.gossip_port.to_string(),
            "--voters".to_owned(),
            self.config.voters.to_string(),
        ];
        if i == 0 {
            args.push("--bootstrap".to_owned());
        }
        // Every other node is a seed, so any surviving node lets a restarted one back in.
        let seeds: Vec<String> = (0..self.len())
            .filter(|j| *j != i)
            .map(|j| self.layout.gossip_addr(j))
            .collect();
        if !seeds.is_empty() {
            args.push("--join".to_owned());
            args.push(seeds.join(","));
        }
        args.extend(self.config.extra_args.iter().cloned());
        args
    }

    /// Starts node i; its output goes to `<node dir>/node.log`.
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        if self.children[i].is_some() {
            bail!("{} is already running", self.name(i));
        }
        let dir = self.node_dir(i);
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("node.log"))?;
        let child = Command::new(&self.config.binary)
            .args(self.node_args(i))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.config.binary.display()))?;
        self.children[i] = Some(child);
        Ok(())
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.len() {
            if self.children[i].is_none() {
                self.start_node(i)?;
            }
        }
        Ok(())
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().and_then(|c| c.id())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.children[i].is_some()
    }

    /// Sends a signal to node i without waiting (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, i: usize, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid(i)
            .with_context(|| format!("{} is not running", self.name(i)))?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("signalling {}", self.name(i)))?;
        Ok(())
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[i].take() {
            // SIGKILL works on a stopped (SIGSTOP) process too; the wait below reaps it.
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM, wait for a clean exit (SIGKILL after `grace`). Returns the exit status.
    pub async fn stop(
        &mut self,
        i: usize,
        grace: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let Some(mut child) = self.children[i].take() else {
            return Ok(None);
        };
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => {
                tracing::warn!(node = self.name(i), "did not stop in time; killing it");
                child.kill().await?;
                Ok(Some(child.wait().await?))
            }
        }
    }

    pub async fn stop_all(&mut self, grace: Duration) -> anyhow::Result<()> {
        for i in 0..self.len() {
            if let Some(child) = &self.children[i]
                && let Some(pid) = child.id()
            {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        for i in 0..self.len() {
            self.stop(i, grace).await?;
        }
        Ok(())
    }

    /// Reaps nodes that exited by themselves; returns their names and statuses.
    pub fn reap_exited(&mut self) -> Vec<(String, std::process::ExitStatus)> {
        let mut out = Vec::new();
        for i in 0..self.len() {
            if let Some(child) = &mut self.children[i]
                && let Ok(Some(status)) = child.try_wait()
            {
                out.push((self.layout.nodes[i].name.clone(), status));
                self.children[i] = None;
            }
        }
        out
    }

    pub async fn status(&self, i: usize, leader_view: bool) -> anyhow::Result<NodeStatus> {
        let url = format!(
            "{}{STATUS_PATH}{}",
            self.layout.api_url(i),
            if leader_view { "?leader=true" } else { "" }
        );
        self.http.get_json(&url, Duration::from_secs(5)).await
    }

    /// Waits until some running node reports a leader that every running node agrees on.
    pub async fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders = Vec::new();
            let mut all = true;
            for i in 0..self.len() {
                if !self.is_running(i) {
                    continue;
                }
                match self.status(i, false).await {
                    Ok(s) => leaders.push(s.raft.leader),
                    Err(_) => all = false,
                }
            }
            if all
                && let Some(Some(first)) = leaders.first()
                && leaders.iter().all(|l| l.as_deref() == Some(first.as_str()))
            {
                return Ok(first.clone());
            }
            if Instant::now() > deadline {
                bail!("no agreed leader after {timeout:?} (views: {leaders:?})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `check` holds for the leader's status.
    pub async fn wait_for_status(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&NodeStatus) -> bool,
    ) -> anyhow::Result<NodeStatus> {
        let deadline = Instant::now() + timeout;
        let mut last = None;
        loop {
            for i in 0..self.len() {
                if !self.is_running(i) {
                    continue;
                }
                if let Ok(s) = self.status(i, true).await {
                    if check(&s) {
                        return Ok(s);
                    }
                    last = Some(s);
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for {what}; last status: {last:#?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A client certificate issued by the cluster CA (for tests and benchmarks).
    pub fn client_identity(&self, name: &str) -> anyhow::Result<Identity> {
        Ok(self.ca.issue(name)?)
    }

    /// A store client bound to node i.
    pub async fn store_client(&self, rpc: &RpcEndpoint, i: usize) -> anyhow::Result<StoreClient> {
        Ok(StoreClient::new(rpc.clone(), self.layout.rpc_addr(i)?))
    }

    /// Sets the fault rules of node i (it must run with `--chaos`).
    pub async fn set_faults(&self, i: usize, rules: &FaultRules) -> anyhow::Result<()> {
        let url = format!("{}{FAULTS_PATH}", self.layout.api_url(i));
        let resp = self
            .http
            .send_json("PUT", &url, rules, Duration::from_secs(5))
            .await?;
        if resp.status != 200 {
            bail!(
                "setting faults on {}: {} {}",
                self.name(i),
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        Ok(())
    }

    /// Partitions the cluster: nodes in `group` (indices) talk only among themselves, the rest
    /// only among themselves.
    pub async fn partition(&self, group: &[usize]) -> anyhow::Result<()> {
        let inside: Vec<String> = group.iter().map(|i| self.name(*i).to_owned()).collect();
        let outside: Vec<String> = (0..self.len())
            .filter(|i| !group.contains(i))
            .map(|i| self.name(i).to_owned())
            .collect();
        for i in 0..self.len() {
            if !self.is_running(i) {
                continue;
            }
            let mine = if group.contains(&i) {
                &inside
            } else {
                &outside
            };
            self.set_faults(
                i,
                &FaultRules {
                    partition: Some(mine.clone()),
                    ..Default::default()
                },
            )
            .await?;
        }
        Ok(())
    }

    pub async fn heal(&self) -> anyhow::Result<()> {
        for i in 0..self.len() {
            if self.is_running(i) {
                self.set_faults(i, &FaultRules::default()).await?;
            }
        }
        Ok(())
    }
}

/// A base port with `count` free TCP and UDP ports at base, base+100 and base+200 (best effort:
/// another process may still take one before the nodes bind).
pub fn free_base_port(count: usize) -> anyhow::Result<u16> {
    for _ in 0..200 {
        let base: u16 = 20_000 + (rand::random::<u16>() % 30_000);
        let ok = (0..count).all(|i| {
            let i = i as u16;
            port_free(base + i) && port_free(base + 100 + i) && port_free(base + 200 + i)
        });
        if ok {
            return Ok(base);
        }
    }
    bail!("no free port range found")
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
        && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

/// Path of the `flotilla` binary for tests and benchmarks.
///
/// `FLOTILLA_BIN` wins. Otherwise, when running under cargo (tests), the binary is built once
/// with `cargo build -p flotilla` in the profile of the running executable, so `cargo test`
/// alone is enough on a fresh checkout. Outside cargo, the binary next to the executable is used.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    static BUILT: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    if let Ok(p) = std::env::var("FLOTILLA_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test-binary>
    let profile_dir = exe
        .parent()
        .and_then(|d| {
            if d.ends_with("deps") {
                d.parent()
            } else {
                Some(d)
            }
        })
        .context("locating the target directory")?
        .to_owned();
    let binary = profile_dir.join("flotilla");
    if std::env::var_os("CARGO").is_none() {
        if binary.is_file() {
            return Ok(binary);
        }
        bail!(
            "flotilla binary not found at {}; build it or set FLOTILLA_BIN",
            binary.display()
        );
    }
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut cmd = std::process::Command::new(cargo);
            cmd.args(["build", "-p", "flotilla", "--bin", "flotilla"]);
            // `cargo test` runs tests with the test package's CARGO_PKG_*, CARGO_MANIFEST_DIR,
            // ... set. Build scripts (ring's) declare rerun-if-env-changed on those, so passing
            // them on would rebuild ring and everything above it on every test binary, and
            // again on the next plain `cargo build`.
            for (key, _) in std::env::vars_os() {
                let Some(key) = key.to_str() else { continue };
                if key.starts_with("CARGO_PKG_")
                    || key.starts_with("CARGO_MANIFEST_")
                    || key.starts_with("CARGO_BIN_")
                    || matches!(
                        key,
                        "CARGO_CRATE_NAME"
                            | "CARGO_PRIMARY_PACKAGE"
                            | "CARGO_TARGET_TMPDIR"
                            | "OUT_DIR"
                    )
                {
                    cmd.env_remove(key);
                }
            }
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            match cmd.status() {
                Ok(s) if s.success() && binary.is_file() => Ok(binary.clone()),
                Ok(s) => Err(format!("cargo build -p flotilla failed ({s})")),
                Err(e) => Err(format!("running cargo: {e}")),
            }
        })
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}
