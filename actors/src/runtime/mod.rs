//! The container runtime interface the kubelet drives, shaped like the Kubernetes CRI: pod
//! sandboxes, images, containers (create / start / stop / remove / status), logs and exec.
//!
//! Implementations: `process` (real processes; isolated in namespaces and cgroups with an
//! image root filesystem when running as root on Linux, plain host processes otherwise) and
//! `sim` (no processes; states advance after delays, for scale trials). Every implementation
//! passes the conformance suite in `conformance.rs`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::SystemTime;

use futures::future::BoxFuture;

pub mod conformance;
pub mod process;
pub mod sim;

/// Errors a runtime reports; the kubelet turns them into pod conditions and events.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("not found: {0}")]
    NotFound(String),
    /// The image cannot be had (not in the local store and no registry answered).
    #[error("image {image:?}: {message}")]
    ImagePull { image: String, message: String },
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;

/// What a pod sandbox is made from (one per pod: its network, hostname, shared IPC).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SandboxConfig {
    pub pod_uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    /// The pod's DNS domain when it has a `subdomain` (`<subdomain>.<namespace>.svc.<cluster
    /// domain>`); `/etc/hosts` then names the pod `<hostname>.<domain>` too, as in Kubernetes.
    #[serde(default)]
    pub domain: String,
    /// Share the node's network namespace (`hostNetwork`).
    pub host_network: bool,
    /// Extra `/etc/hosts` lines and DNS settings written into the sandbox.
    pub hosts: Vec<(IpAddr, Vec<String>)>,
    pub dns_servers: Vec<IpAddr>,
    pub dns_searches: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Where the sandbox keeps its files (volumes, logs, generated /etc files).
    pub dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxState {
    Ready,
    NotReady,
}

#[derive(Debug, Clone)]
pub struct SandboxStatus {
    pub id: String,
    pub state: SandboxState,
    /// The pod's IP (None when it shares the host network).
    pub ip: Option<IpAddr>,
    /// The pod's own network namespace (a file to `setns` into), when it has one; the
    /// kubelet enters it to forward host ports.
    pub netns: Option<PathBuf>,
    pub created_at: SystemTime,
    pub config: SandboxConfig,
}

/// A bind mount into a container (volumes are prepared by the kubelet as host directories).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: PathBuf,
    pub read_only: bool,
}

/// Resource limits the runtime enforces (cgroups when isolated).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// CPU limit in millicores (quota = millis/1000 × period).
    pub cpu_millis: Option<u64>,
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ContainerConfig {
    pub name: String,
    /// Image reference as written in the pod (`busybox:1.36`); resolved by the runtime.
    pub image: String,
    /// Kubernetes `command` (overrides the image entrypoint) and `args` (override its cmd).
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub mounts: Vec<Mount>,
    pub limits: Limits,
    /// Restart attempt, so logs of earlier attempts stay readable (`--previous`).
    pub attempt: u32,
    pub stdin: bool,
    pub tty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

#[derive(Debug, Clone)]
pub struct ContainerStatus {
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub attempt: u32,
    pub state: ContainerState,
    pub image: String,
    /// The resolved image (digest or id).
    pub image_ref: String,
    pub pid: Option<u32>,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub finished_at: Option<SystemTime>,
    pub exit_code: Option<i32>,
    /// `Completed`, `Error`, `OOMKilled`, … as Kubernetes reports them.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The container's log file (CRI format: `<rfc3339nano> <stream> <P|F> <line>`).
    pub log_path: PathBuf,
}

/// What `pull_image` and `image_status` report.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    pub id: String,
    pub references: Vec<String>,
    pub size_bytes: u64,
}

/// How `pull_image` may get an image (`imagePullPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

/// The result of a command run to completion in a container (exec probes, `exec` without a
/// terminal).
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// An interactive exec: the process's stdio as async streams, and its exit code. With a
/// terminal, `stdout` carries everything the command writes, `stderr` is `None`, and
/// `resize` sets the terminal's size.
pub struct ExecSession {
    pub stdin: Option<Box<dyn tokio::io::AsyncWrite + Send + Unpin>>,
    pub stdout: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub stderr: Option<Box<dyn tokio::io::AsyncRead + Send + Unpin>>,
    pub resize: Option<Box<dyn Fn(u16, u16) + Send + Sync>>,
    pub exit: BoxFuture<'static, Result<i32>>,
}

/// The CRI-shaped interface. Ids are opaque strings chosen by the runtime. Every call is
/// idempotent where the CRI's is (stopping a stopped container, removing a removed one).
/// Implementations persist what they need to re-adopt sandboxes and containers after the node
/// daemon restarts: `list_sandboxes` and `list_containers` return them.
pub trait Runtime: Send + Sync + 'static {
    /// `process` or `sim`, and whether containers are isolated.
    fn name(&self) -> &'static str;

    /// Whether containers change state without being told to (exit, crash): then the
    /// kubelet must look at every pod every second, as kubelet's PLEG relists do.
    fn containers_change_by_themselves(&self) -> bool {
        true
    }

    fn run_sandbox(&self, config: SandboxConfig) -> BoxFuture<'_, Result<SandboxStatus>>;
    /// Stops every container of the sandbox, then its network.
    fn stop_sandbox(&self, id: &str) -> BoxFuture<'_, Result<()>>;
    fn remove_sandbox(&self, id: &str) -> BoxFuture<'_, Result<()>>;
    fn sandbox_status(&self, id: &str) -> BoxFuture<'_, Result<SandboxStatus>>;
    fn list_sandboxes(&self) -> BoxFuture<'_, Result<Vec<SandboxStatus>>>;

    fn pull_image(&self, image: &str, policy: PullPolicy) -> BoxFuture<'_, Result<ImageInfo>>;
    fn image_status(&self, image: &str) -> BoxFuture<'_, Result<Option<ImageInfo>>>;

    fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
    ) -> BoxFuture<'_, Result<String>>;
    fn start_container(&self, id: &str) -> BoxFuture<'_, Result<()>>;
    /// SIGTERM, then SIGKILL after `grace`.
    fn stop_container(&self, id: &str, grace: std::time::Duration) -> BoxFuture<'_, Result<()>>;
    fn remove_container(&self, id: &str) -> BoxFuture<'_, Result<()>>;
    fn container_status(&self, id: &str) -> BoxFuture<'_, Result<ContainerStatus>>;
    fn list_containers(&self) -> BoxFuture<'_, Result<Vec<ContainerStatus>>>;

    /// Runs `cmd` in the container to completion, killed after `timeout`.
    fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: std::time::Duration,
    ) -> BoxFuture<'_, Result<ExecOutput>>;
    /// Starts `cmd` in the container with its stdio connected to the session (through a
    /// terminal when `tty`).
    fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        stdin: bool,
        tty: bool,
    ) -> BoxFuture<'_, Result<ExecSession>>;
}
