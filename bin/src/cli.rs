//! Client commands: `cluster`, `kubeconfig`, `ca`, `chaos`, `bench`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Subcommand, ValueEnum};
use flotilla_chaos::http::HttpClient;
use flotilla_chaos::kubeconfig::resolve_servers;
use flotilla_chaos::status::{FAULTS_PATH, NodeStatus, REMOVE_PATH, STATUS_PATH};
use flotilla_mesh::{ClusterCa, FaultRules};

/// Which cluster the command talks to.
#[derive(clap::Args, Debug)]
pub struct Target {
    /// URL of a node's API port, e.g. http://127.0.0.1:6443.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Kubeconfig to read the cluster from (default: $KUBECONFIG, then .flotilla/kubeconfig).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
}

impl Target {
    fn servers(&self) -> anyhow::Result<Vec<String>> {
        resolve_servers(self.server.as_deref(), self.kubeconfig.as_deref())
    }
}

#[derive(Clone, Copy, ValueEnum, Debug)]
pub enum Output {
    Table,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Gossip members and the Raft view of the leader.
    Status {
        #[arg(short, long, value_enum, default_value = "table")]
        output: Output,
    },
    /// Take a node out of the cluster for good.
    Remove { node: String },
}

#[derive(Subcommand, Debug)]
pub enum CaCommand {
    /// Create a cluster CA (ca.pem, ca.key) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node certificate from the CA in DIR into OUT (ca.pem, node.pem, node.key).
    Issue {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum ChaosCommand {
    /// Show the node's fault rules.
    Get,
    /// Replace the node's fault rules.
    Set {
        /// Drop all traffic to and from these nodes.
        #[arg(long, value_delimiter = ',')]
        drop: Vec<String>,
        /// Delay messages to a node: NAME=MILLIS (repeatable).
        #[arg(long)]
        delay: Vec<String>,
        /// Send messages to these nodes twice.
        #[arg(long, value_delimiter = ',')]
        duplicate: Vec<String>,
        /// Talk only to these nodes (a partition group; include this node's own name).
        #[arg(long, value_delimiter = ',')]
        partition: Option<Vec<String>>,
    },
    /// Remove all fault rules.
    Clear,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Write throughput and latency of the store, optionally against etcd, plus failover time.
    Store(flotilla_chaos::bench::StoreBenchArgs),
    /// Kubernetes API: create/get/list at 1, 16, 100 clients, a 10,000-pod list, and watch
    /// delivery to 1,000 watchers.
    Api(flotilla_chaos::bench_api::ApiBenchArgs),
    /// Pod start latency (create → Running) of 100 pods on one node, and the node's memory.
    Pods(flotilla_chaos::bench_pods::PodBenchArgs),
    /// Scheduling throughput and latency: hollow nodes (default 1,000) and many pods.
    Schedule(flotilla_chaos::bench_schedule::ScheduleBenchArgs),
    /// Failover: SIGKILL a node holding pods of a Deployment (default 4 nodes, 30 pods, 5
    /// runs); time to detect and until its pods run elsewhere.
    Failover(flotilla_chaos::bench_failover::FailoverBenchArgs),
}

/// Tries each server in turn until one answers.
async fn get_status(target: &Target, leader: bool) -> anyhow::Result<NodeStatus> {
    let http = HttpClient::default();
    let mut last_err = None;
    for server in target.servers()? {
        let url = format!(
            "{server}{STATUS_PATH}{}",
            if leader { "?leader=true" } else { "" }
        );
        match http
            .get_json::<NodeStatus>(&url, Duration::from_secs(10))
            .await
        {
            Ok(s) => return Ok(s),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err
        .map(|e| e.context("no node of the cluster answered"))
        .unwrap_or_else(|| anyhow::anyhow!("no server")))
}

pub async fn cluster(target: Target, command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { output } => {
            let status = get_status(&target, true).await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Output::Table => print_status(&status),
            }
            Ok(())
        }
        ClusterCommand::Remove { node } => {
            let http = HttpClient::default();
            let mut last_err = None;
            for server in target.servers()? {
                let url = format!("{server}{REMOVE_PATH}?node={node}");
                match http
                    .request("POST", &url, None, Duration::from_secs(30))
                    .await
                {
                    Ok(resp) if resp.status == 200 => {
                        println!("node {node} removed from the cluster");
                        return Ok(());
                    }
                    Ok(resp) => {
                        let body: serde_json::Value = resp.json().unwrap_or_default();
                        bail!(
                            "cannot remove {node}: {}",
                            body.get("error")
                                .and_then(|e| e.as_str())
                                .unwrap_or("unknown error")
                        );
                    }
                    Err(e) => last_err = Some(e),
                }
            }
            Err(last_err
                .map(|e| e.context("no node of the cluster answered"))
                .unwrap_or_else(|| anyhow::anyhow!("no server")))
        }
    }
}

fn print_status(s: &NodeStatus) {
    let raft = &s.raft;
    println!(
        "RAFT  leader={}  term={}  revision={}  committed={}  (view of {})",
        raft.leader.as_deref().unwrap_or("<none>"),
        raft.term,
        raft.revision,
        raft.committed_index
            .map(|i| i.to_string())
            .unwrap_or("-".into()),
        raft.node
    );
    let roles: BTreeMap<&str, (&str, Option<u64>)> = raft
        .members
        .iter()
        .map(|m| (m.name.as_str(), (m.role.as_str(), m.matched_index)))
        .collect();
    println!();
    println!(
        "{:<12} {:<8} {:<6} {:<9} {:<8} {:<11} {:<22} {:<22} {:<20}",
        "NAME", "GOSSIP", "READY", "RAFT", "MATCHED", "ROLES", "RPC", "API", "GENERATION"
    );
    let mut names: Vec<&str> = s.members.iter().map(|m| m.name.as_str()).collect();
    for m in &raft.members {
        if !names.contains(&m.name.as_str()) {
            names.push(&m.name);
        }
    }
    names.sort();
    for name in names {
        let member = s.members.iter().find(|m| m.name == name);
        let (role, matched) = roles.get(name).copied().unwrap_or(("-", None));
        let role = if raft.leader.as_deref() == Some(name) {
            "leader"
        } else {
            role
        };
        println!(
            "{:<12} {:<8} {:<6} {:<9} {:<8} {:<11} {:<22} {:<22} {:<20}",
            name,
            member
                .map(|m| if m.alive { "alive" } else { "dead" })
                .unwrap_or("unknown"),
            member.map(|m| m.ready.to_string()).unwrap_or("-".into()),
            role,
            matched.map(|i| i.to_string()).unwrap_or("-".into()),
            member.map(|m| m.roles.join(",")).unwrap_or("-".into()),
            member.map(|m| m.rpc_addr.to_string()).unwrap_or("-".into()),
            member.map(|m| m.api_addr.to_string()).unwrap_or("-".into()),
            member
                .map(|m| m.generation_id.to_string())
                .unwrap_or("-".into()),
        );
    }
}

pub fn print_kubeconfig(data_dir: &Path) -> anyhow::Result<()> {
    let path = data_dir.join("kubeconfig");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no kubeconfig at {} (start a cluster with `flotilla up`)",
            path.display()
        )
    })?;
    print!("{text}");
    Ok(())
}

pub fn ca(command: CaCommand) -> anyhow::Result<()> {
    match command {
        CaCommand::Init { dir } => {
            if dir.join("ca.pem").exists() {
                bail!("{} already holds a CA; not overwriting it", dir.display());
            }
            std::fs::create_dir_all(&dir)?;
            ClusterCa::generate("flotilla")?.write_files(&dir)?;
            println!("cluster CA written to {}", dir.display());
        }
        CaCommand::Issue { dir, name, out } => {
            let ca = ClusterCa::load_files(&dir)?;
            std::fs::create_dir_all(&out)?;
            ca.issue(&name)?.write(&out, "node")?;
            println!(
                "certificate for {name} written to {} (ca.pem, node.pem, node.key)",
                out.display()
            );
        }
    }
    Ok(())
}

pub async fn chaos(target: Target, command: ChaosCommand) -> anyhow::Result<()> {
    let server = target.servers()?.into_iter().next().context("no server")?;
    let url = format!("{server}{FAULTS_PATH}");
    let http = HttpClient::default();
    let timeout = Duration::from_secs(10);
    let resp = match command {
        ChaosCommand::Get => http.request("GET", &url, None, timeout).await?,
        ChaosCommand::Clear => http.request("DELETE", &url, None, timeout).await?,
        ChaosCommand::Set {
            drop,
            delay,
            duplicate,
            partition,
        } => {
            let mut delay_ms = BTreeMap::new();
            for d in delay {
                let (name, ms) = d
                    .split_once('=')
                    .with_context(|| format!("--delay takes NAME=MILLIS, got {d:?}"))?;
                let ms: u64 = ms
                    .parse()
                    .with_context(|| format!("--delay {d:?}: not a number of milliseconds"))?;
                delay_ms.insert(name.to_owned(), ms);
            }
            let rules = FaultRules {
                drop,
                delay_ms,
                duplicate,
                partition,
            };
            http.send_json("PUT", &url, &rules, timeout).await?
        }
    };
    match resp.status {
        200 => {
            println!("{}", String::from_utf8_lossy(&resp.body));
            Ok(())
        }
        404 => bail!("{server} does not accept fault rules (start the node with --chaos)"),
        code => bail!("{server}: {code} {}", String::from_utf8_lossy(&resp.body)),
    }
}

pub async fn bench(command: BenchCommand) -> anyhow::Result<()> {
    match command {
        BenchCommand::Store(args) => flotilla_chaos::bench::store(args).await,
        BenchCommand::Api(args) => flotilla_chaos::bench_api::api(args).await,
        BenchCommand::Pods(args) => flotilla_chaos::bench_pods::pods(args).await,
        BenchCommand::Schedule(args) => flotilla_chaos::bench_schedule::schedule(args).await,
        BenchCommand::Failover(args) => flotilla_chaos::bench_failover::failover(args).await,
    }
}
