//! The `flotilla` binary: node daemon, local cluster launcher and CLI.

mod cli;
mod https;
mod image;
mod kubectl;
mod node;
mod up;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "flotilla",
    version,
    about = "A Kubernetes-compatible container orchestrator"
)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Commands {
    /// Run one node of a cluster.
    Node(Box<node::NodeArgs>),
    /// Start a local cluster of N node processes on loopback and stay in the foreground.
    Up(up::UpArgs),
    /// Inspect or change the cluster.
    Cluster {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::ClusterCommand,
    },
    /// Print the kubeconfig of the local cluster.
    Kubeconfig {
        #[arg(long, default_value = ".flotilla")]
        data_dir: PathBuf,
    },
    /// Manage the cluster CA and node certificates for nodes started by hand.
    Ca {
        #[command(subcommand)]
        command: cli::CaCommand,
    },
    /// Fault injection on nodes started with --chaos.
    Chaos {
        #[command(flatten)]
        target: cli::Target,
        #[command(subcommand)]
        command: cli::ChaosCommand,
    },
    /// Benchmarks that print figures.
    Bench {
        #[command(subcommand)]
        command: cli::BenchCommand,
    },
    /// A node's local image store: import, ls, rm, pull.
    Image {
        #[command(subcommand)]
        command: image::ImageCommand,
    },
    #[command(flatten)]
    Kube(kubectl::KubeCommand),
}

fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}

fn main() -> ExitCode {
    // The container runtime's shim (hidden; started by the node daemon). It must stay
    // single-threaded, so it is dispatched before clap and before the async runtime exists.
    let mut raw = std::env::args_os().skip(1);
    if raw
        .next()
        .is_some_and(|a| a == flotilla_actors::runtime::process::SHIM_SUBCOMMAND)
    {
        restore_sigpipe();
        let args = raw.map(|a| a.to_string_lossy().into_owned()).collect();
        return flotilla_actors::runtime::process::shim_main(args);
    }
    let cli = Cli::parse();
    if !matches!(cli.command, Commands::Node(_) | Commands::Up(_)) {
        restore_sigpipe();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Commands::Node(args) => {
                init_logging(
                    args.log_format,
                    "info,openraft=warn,chitchat=warn,quinn=warn",
                );
                node::run(*args).await
            }
            Commands::Up(args) => {
                init_logging(LogFormat::Text, "info");
                up::run(args).await
            }
            Commands::Cluster { target, command } => cli::cluster(target, command).await,
            Commands::Kubeconfig { data_dir } => cli::print_kubeconfig(&data_dir),
            Commands::Ca { command } => cli::ca(command),
            Commands::Chaos { target, command } => cli::chaos(target, command).await,
            Commands::Bench { command } => {
                init_logging(LogFormat::Text, "warn");
                cli::bench(command).await
            }
            Commands::Image { command } => image::run(command).await,
            Commands::Kube(command) => kubectl::run(command).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Client commands die quietly on a closed pipe (`flotilla cluster status | head`), like other
/// Unix tools, instead of panicking in `println!`. Not for `node` and `up`: a daemon must see
/// EPIPE on a socket as an error, not be killed by the signal.
#[allow(unsafe_code)]
fn restore_sigpipe() {
    use nix::sys::signal::{SigHandler, Signal, signal};
    // SAFETY: called before any other thread exists; SIG_DFL installs no Rust handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
}
