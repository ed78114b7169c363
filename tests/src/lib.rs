//! Helpers for the process-level integration tests in `tests/`.
//!
//! Every test starts its own cluster of real `flotilla node` processes on loopback (see
//! [`TestCluster::start`]), in its own temporary data directory, and stops it at the end. The
//! `flotilla` binary must be built first (`cargo build -p flotilla`); set `FLOTILLA_BIN` to use
//! another one. Set `FLOTILLA_KEEP_DATA=1` to keep the data directories (node logs) of the
//! tests; the log tails of every node are printed when a test panics.
//!
//! Nothing here asserts on durations: the machine running the tests may be slow and shared,
//! so every wait is "until the condition holds, or a generous deadline passes".

pub mod kubectl;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use flotilla_chaos::{LocalCluster, LocalClusterConfig, NodeStatus, find_binary, free_base_port};
use flotilla_consensus::StoreClient;
use flotilla_mesh::RpcEndpoint;
use tokio::time::Instant;

pub use flotilla_chaos;
pub use flotilla_consensus;
pub use flotilla_mesh;

/// Deadline for a cluster to (re)elect a leader or converge after a fault.
pub const CONVERGE: Duration = Duration::from_secs(60);

/// A running test cluster, with a client RPC endpoint whose certificate the cluster CA issued.
///
/// Dereferences to [`LocalCluster`] (kill, signal, partition, status, ...). Children are
/// killed on drop, so a panicking test does not leave processes behind.
pub struct TestCluster {
    pub cluster: LocalCluster,
    pub rpc: RpcEndpoint,
    dir: Option<tempfile::TempDir>,
}

impl std::ops::Deref for TestCluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}

impl std::ops::DerefMut for TestCluster {
    fn deref_mut(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }
}

/// Kills container processes a test's nodes left running (their shims survive the node
/// daemon by design): every shim whose command line names `data_dir`, and the shims' children.
pub fn kill_leftover_containers(data_dir: &Path) {
    let needle = data_dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut procs: Vec<(i32, i32, String)> = Vec::new();
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let ppid = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("PPid:"))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0);
        procs.push((pid, ppid, cmdline));
    }
    let shims: Vec<i32> = procs
        .iter()
        .filter(|(_, _, c)| c.contains("runtime-shim") && c.contains(&needle))
        .map(|(p, _, _)| *p)
        .collect();
    for (pid, ppid, _) in &procs {
        if shims.contains(ppid) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    for pid in shims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Memory-backed emptyDirs (tmpfs) of pods that were not deleted: unmounted, so the data
    // directory can be removed and no mount outlives the test.
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        for line in mounts.lines() {
            if let Some(point) = line.split_whitespace().nth(1)
                && point.starts_with(needle.as_str())
            {
                let _ = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH);
            }
        }
    }
    // The sandboxes' network namespaces (`flotilla-<sandbox id>`), named by their state dirs.
    let Ok(nodes) = std::fs::read_dir(data_dir) else {
        return;
    };
    for node in nodes.flatten() {
        let Ok(sandboxes) = std::fs::read_dir(node.path().join("runtime/sandboxes")) else {
            continue;
        };
        for sb in sandboxes.flatten() {
            let name = format!("flotilla-{}", sb.file_name().to_string_lossy());
            if Path::new("/run/netns").join(&name).exists() {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", &name])
                    .status();
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Nodes first, so no kubelet restarts what is killed next.
        for i in 0..self.cluster.len() {
            let _ = self.cluster.signal(i, nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
        kill_leftover_containers(&self.cluster.config.data_dir);
        if std::thread::panicking() {
            eprintln!(
                "---- test failed; node logs of {} ----",
                self.cluster.config.data_dir.display()
            );
            print_log_tails(&self.cluster, 60);
        }
        if std::env::var_os("FLOTILLA_KEEP_DATA").is_some()
            && let Some(dir) = self.dir.take()
        {
            let path = dir.keep();
            eprintln!("kept data dir {}", path.display());
        }
    }
}

/// The last `lines` lines of every node's log, on stderr.
pub fn print_log_tails(cluster: &LocalCluster, lines: usize) {
    for i in 0..cluster.len() {
        let path = cluster.node_dir(i).join("node.log");
        eprintln!("==== {} ({}) ====", cluster.name(i), path.display());
        eprintln!("{}", tail(&path, lines));
    }
}

/// The last `lines` lines of a text file (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl TestCluster {
    /// Starts `nodes` nodes with `voters` target voters and waits for an agreed leader.
    ///
    /// Ports come from [`free_base_port`], which is best effort: if a node exits early (most
    /// likely because another process took one of its ports) the whole cluster is started
    /// again on other ports, up to three times.
    pub async fn start(
        label: &str,
        nodes: usize,
        voters: usize,
        extra_args: &[&str],
    ) -> anyhow::Result<TestCluster> {
        Self::start_first(label, nodes, nodes, voters, extra_args).await
    }

    /// Like [`start`](Self::start), for a layout of `nodes` nodes of which only the first
    /// `started` are started: the others (certificates and data directories ready) can join
    /// later with [`LocalCluster::start_node`].
    pub async fn start_first(
        label: &str,
        nodes: usize,
        started: usize,
        voters: usize,
        extra_args: &[&str],
    ) -> anyhow::Result<TestCluster> {
        let binary = find_binary()?;
        let mut last_err = None;
        for attempt in 1..=3 {
            let dir = tempfile::Builder::new()
                .prefix(&format!("flotilla-{label}-"))
                .tempdir()?;
            let base_port = free_base_port(nodes)?;
            let mut cluster = LocalCluster::prepare(LocalClusterConfig {
                binary: binary.clone(),
                data_dir: dir.path().to_owned(),
                nodes,
                base_port,
                voters,
                extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            })?;
            for i in 0..started.min(nodes) {
                cluster.start_node(i)?;
            }
            let formed = async {
                wait_for_leader_or_exit(&mut cluster, CONVERGE).await?;
                // The first node bootstraps alone; the others join as learners and are then
                // promoted. Until that is done the cluster cannot survive losing node 1.
                let want = (voters.min(started), started.saturating_sub(voters));
                cluster
                    .wait_for_status(CONVERGE, "the full voter set", |s| roles(s) == want)
                    .await?;
                wait_for_leader_or_exit(&mut cluster, CONVERGE).await
            };
            match formed.await {
                Ok(_) => {
                    let rpc = RpcEndpoint::client(&cluster.client_identity("test")?).await?;
                    return Ok(TestCluster {
                        cluster,
                        rpc,
                        dir: Some(dir),
                    });
                }
                Err(e) => {
                    eprintln!("{label}: cluster start attempt {attempt} failed: {e:#}");
                    print_log_tails(&cluster, 30);
                    let _ = cluster.stop_all(Duration::from_secs(5)).await;
                    if !format!("{e:#}").contains("exited") {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("cluster did not start")))
    }

    pub fn data_dir(&self) -> PathBuf {
        self.cluster.config.data_dir.clone()
    }

    /// A store client bound to node i, with the default 15 s timeout.
    pub fn client(&self, i: usize) -> StoreClient {
        StoreClient::new(
            self.rpc.clone(),
            self.cluster.layout.rpc_addr(i).expect("valid rpc address"),
        )
    }

    /// A store client bound to node i, with a chosen per-call timeout.
    pub fn client_with_timeout(&self, i: usize, timeout: Duration) -> StoreClient {
        self.client(i).with_timeout(timeout)
    }

    /// Index of the node called `name`.
    pub fn index_of(&self, name: &str) -> anyhow::Result<usize> {
        (0..self.cluster.len())
            .find(|i| self.cluster.name(*i) == name)
            .with_context(|| format!("no node named {name}"))
    }

    /// Waits for a leader that every running node agrees on; returns its index.
    pub async fn leader_index(&self) -> anyhow::Result<usize> {
        let name = self.cluster.wait_for_leader(CONVERGE).await?;
        self.index_of(&name)
    }

    /// Waits until the nodes `among` (indices) all report the same leader, which must itself
    /// be one of `among`. Other nodes are not asked (they may be stopped or partitioned).
    pub async fn wait_for_leader_among(
        &self,
        among: &[usize],
        timeout: Duration,
    ) -> anyhow::Result<usize> {
        let names: Vec<String> = among
            .iter()
            .map(|i| self.cluster.name(*i).to_owned())
            .collect();
        eventually(timeout, "a leader agreed by the given nodes", || async {
            let mut leaders = Vec::new();
            for &i in among {
                let s = self.cluster.status(i, false).await?;
                leaders.push(s.raft.leader);
            }
            match leaders.first() {
                Some(Some(first))
                    if names.contains(first)
                        && leaders.iter().all(|l| l.as_deref() == Some(first)) =>
                {
                    self.index_of(first)
                }
                _ => bail!("views: {leaders:?}"),
            }
        })
        .await
    }

    /// Stops every node (SIGTERM, then SIGKILL after a grace period).
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.cluster.stop_all(Duration::from_secs(10)).await
    }
}

/// `wait_for_leader`, but fails at once (with "exited" in the message) when a node process
/// exits, instead of waiting out the whole timeout.
pub async fn wait_for_leader_or_exit(
    cluster: &mut LocalCluster,
    timeout: Duration,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let exited = cluster.reap_exited();
        if !exited.is_empty() {
            bail!("nodes exited before a leader was elected: {exited:?}");
        }
        match cluster.wait_for_leader(Duration::from_secs(2)).await {
            Ok(l) => return Ok(l),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => {}
        }
    }
}

/// Retries `f` (pausing briefly between tries) until it succeeds or `timeout` passes; the
/// error then names `what` and carries the last failure.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                if Instant::now() > deadline {
                    return Err(
                        e.context(format!("timed out after {timeout:?} waiting for {what}"))
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Counts of (voters, learners) in a Raft status.
pub fn roles(status: &NodeStatus) -> (usize, usize) {
    let voters = status
        .raft
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .count();
    let learners = status
        .raft
        .members
        .iter()
        .filter(|m| m.role == "learner")
        .count();
    (voters, learners)
}

/// Names of the voters in a Raft status, sorted.
pub fn voter_names(status: &NodeStatus) -> Vec<String> {
    let mut v: Vec<String> = status
        .raft
        .members
        .iter()
        .filter(|m| m.role == "voter")
        .map(|m| m.name.clone())
        .collect();
    v.sort();
    v
}

/// Runs the `flotilla` binary with `args` and returns (success, stdout, stderr).
pub async fn run_cli(args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(find_binary()?)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .with_context(|| format!("flotilla {args:?} did not finish"))??;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
