//! `flotilla up`: a local cluster of node processes on loopback, in the foreground.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use flotilla_chaos::{LocalCluster, LocalClusterConfig};
use tokio::signal::unix::{SignalKind, signal};

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Number of node processes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Where the cluster keeps its data; running `up` again on it brings the same cluster back.
    #[arg(long, default_value = ".flotilla")]
    data_dir: PathBuf,
    /// Target number of Raft voters (the rest are learners).
    #[arg(long, default_value_t = 3)]
    voters: usize,
    /// First API port; node i uses BASE+i (API), BASE+100+i (RPC) and BASE+200+i (gossip).
    #[arg(long, default_value_t = 6443)]
    base_port: u16,
    /// Start the nodes with the fault-injection API enabled.
    #[arg(long)]
    chaos: bool,
    /// The pod network: each node gets a /24 of it for its pods' IPs (when it runs them
    /// isolated, as root). `none`: pods get no IP of their own.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// Extra flags passed to every `flotilla node` (after `--`).
    #[arg(last = true)]
    node_args: Vec<String>,
}

fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    // A voter count above the node count could never be reached.
    let voters = match args.voters.min(args.nodes) {
        0..=2 => 1,
        3..=4 => 3,
        5..=6 => 5,
        _ => 7,
    };
    let mut extra_args = args.node_args.clone();
    if args.chaos {
        extra_args.push("--chaos".to_owned());
    }
    let own_network = extra_args
        .iter()
        .any(|a| a.starts_with("--cluster-cidr") || a.starts_with("--pod-cidr"));
    if args.cluster_cidr != "none" && !own_network {
        extra_args.push(format!("--cluster-cidr={}", args.cluster_cidr));
    }
    let binary = std::env::current_exe().context("locating the flotilla binary")?;
    let mut cluster = LocalCluster::prepare(LocalClusterConfig {
        binary,
        data_dir: args.data_dir.clone(),
        nodes: args.nodes,
        base_port: args.base_port,
        voters,
        extra_args,
    })?;
    cluster.start_all()?;

    // Handlers installed once, before waiting, so no Ctrl-C or SIGTERM is missed.
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    // "Up" means the full voter set: until the joiners are promoted, the cluster could not
    // survive losing the first node.
    let formed = async {
        let leader = cluster.wait_for_leader(Duration::from_secs(60)).await?;
        cluster
            .wait_for_status(Duration::from_secs(60), "the full voter set", |s| {
                s.raft.members.iter().filter(|m| m.role == "voter").count() == voters
            })
            .await?;
        anyhow::Ok(leader)
    };
    let leader = tokio::select! {
        leader = formed => leader,
        _ = interrupt.recv() => None.context("interrupted"),
        _ = term.recv() => None.context("terminated"),
    };
    let leader = match leader {
        Ok(l) => l,
        Err(e) => {
            for (name, status) in cluster.reap_exited() {
                let log = args.data_dir.join(&name).join("node.log");
                eprintln!(
                    "{name} exited ({status}); last lines of {}:\n{}",
                    log.display(),
                    tail(&log, 20)
                );
            }
            cluster.stop_all(Duration::from_secs(10)).await?;
            return Err(e.context("the cluster did not form"));
        }
    };

    let kubeconfig =
        std::fs::canonicalize(cluster.kubeconfig_path()).unwrap_or(cluster.kubeconfig_path());
    println!(
        "Flotilla cluster is up: {} nodes, {voters} voters, leader {leader}",
        cluster.len()
    );
    for i in 0..cluster.len() {
        println!(
            "  {:<8} api {}  pid {}  log {}",
            cluster.name(i),
            cluster.layout.api_url(i),
            cluster.pid(i).unwrap_or_default(),
            cluster.node_dir(i).join("node.log").display()
        );
    }
    println!("kubeconfig: {}", kubeconfig.display());
    println!("  export KUBECONFIG={}", kubeconfig.display());
    println!("  flotilla cluster status");
    println!("Press Ctrl-C to stop the cluster.");

    let mut check = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = interrupt.recv() => break,
            _ = term.recv() => break,
            _ = check.tick() => {
                for (name, status) in cluster.reap_exited() {
                    eprintln!("warning: {name} exited ({status}); see {}", args.data_dir.join(&name).join("node.log").display());
                }
            }
        }
    }
    println!("stopping {} nodes", cluster.len());
    cluster.stop_all(Duration::from_secs(15)).await?;
    println!("stopped; data kept in {}", args.data_dir.display());
    Ok(())
}
