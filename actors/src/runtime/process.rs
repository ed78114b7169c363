//! `process`: the embedded container runtime. Containers are real processes, each supervised by
//! a shim (a re-exec of the node binary, see [`shim_main`]) that outlives the node daemon, so
//! containers survive its restart; state lives in files under `root_dir`, which a new
//! [`ProcessRuntime`] re-adopts.
//!
//! Two modes, chosen at construction:
//! - **isolated** (root on Linux, overlayfs available, `isolate: true`): a network namespace per
//!   sandbox (optionally joined to a node bridge with its own IP from the pod CIDR); per
//!   container PID, mount, UTS and IPC namespaces, an overlay of the image's rootfs as `/`,
//!   cgroup limits (v1 or v2) and the OOM-kill counter.
//! - **plain** otherwise: host processes with the container's command, args, env and working
//!   directory, sharing the host network. Volume paths are not remapped (`Mount`s are ignored:
//!   the process sees host paths) and limits are not enforced.
//!
//! Layout of `root_dir`: `sandboxes/<id>/` (`sandbox.json`, generated `hosts`, `hostname`,
//! `resolv.conf`), `containers/<id>/` (`container.json`, `spec.json`, `started.json`,
//! `exit.json`, `shim.log`, overlay `upper/ work/ rootfs/`), `ipam.json`. Logs go to
//! `<sandbox dir>/logs/<container>/<attempt>.log` in CRI format, rotated by size.

mod cgroup;
mod log;
mod net;
mod pty;
mod shim;
mod spec;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt as _;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

pub use net::{PodNetwork, remove_bridge};
pub use shim::{SHIM_SUBCOMMAND, shim_main};

use self::cgroup::{Cgroups, ContainerCgroup};
use self::spec::{Exited, Isolation, ShimSpec, Started, read_json, write_json};
use super::{
    ContainerConfig, ContainerState, ContainerStatus, ExecOutput, ExecSession, ImageInfo,
    PullPolicy, Result, Runtime, RuntimeError, SandboxConfig, SandboxState, SandboxStatus,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// An image as the runtime needs it: a root filesystem and the config's defaults. The image
/// store implements [`ImageSource`] to hand these out.
#[derive(Debug, Clone, Default)]
pub struct ResolvedImage {
    pub id: String,
    pub references: Vec<String>,
    /// The flattened root filesystem (or the top layer when `lower_layers` is not empty).
    pub rootfs: PathBuf,
    /// Further overlay lower layers below `rootfs`, topmost first.
    pub lower_layers: Vec<PathBuf>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub size_bytes: u64,
}

impl ResolvedImage {
    fn info(&self) -> ImageInfo {
        ImageInfo {
            id: self.id.clone(),
            references: self.references.clone(),
            size_bytes: self.size_bytes,
        }
    }
}

/// Where images come from (the node's image store).
pub trait ImageSource: Send + Sync + 'static {
    fn resolve(&self, reference: &str) -> Option<ResolvedImage>;

    /// Makes the image present according to the policy; without a registry, only what is
    /// already local can be had.
    fn pull(&self, reference: &str, policy: PullPolicy) -> BoxFuture<'_, Result<ResolvedImage>> {
        let found = self.resolve(reference);
        let reference = reference.to_owned();
        async move {
            found.ok_or_else(|| RuntimeError::ImagePull {
                message: match policy {
                    PullPolicy::Never => format!(
                        "Container image {reference:?} is not present with pull policy of Never"
                    ),
                    _ => "not in the local image store and no registry is reachable".into(),
                },
                image: reference,
            })
        }
        .boxed()
    }
}

/// A fixed set of images (tests, and nodes that only run one prepared rootfs).
#[derive(Debug, Clone, Default)]
pub struct StaticImages {
    images: HashMap<String, ResolvedImage>,
}

impl StaticImages {
    pub fn new() -> StaticImages {
        StaticImages::default()
    }

    /// Registers the image under each of its references.
    pub fn with(mut self, image: ResolvedImage) -> StaticImages {
        for r in &image.references {
            self.images.insert(r.clone(), image.clone());
        }
        self
    }
}

impl ImageSource for StaticImages {
    fn resolve(&self, reference: &str) -> Option<ResolvedImage> {
        self.images.get(reference).cloned()
    }
}

/// The node's image store, as far as what is local goes (registry pulls: see its own API).
impl ImageSource for crate::image::ImageStore {
    fn resolve(&self, reference: &str) -> Option<ResolvedImage> {
        let image = crate::image::ImageStore::resolve(self, reference)?;
        Some(ResolvedImage {
            id: image.id,
            references: image.references,
            rootfs: image.rootfs,
            lower_layers: Vec::new(),
            entrypoint: image.config.entrypoint,
            cmd: image.config.cmd,
            env: image.config.env,
            working_dir: image.config.working_dir,
            user: image.config.user,
            size_bytes: image.size_bytes,
        })
    }
}

/// How the runtime starts its shims.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ShimBinary {
    /// This process's own binary, which must route `runtime-shim` to [`shim_main`] (the
    /// `flotilla` binary does).
    #[default]
    CurrentExe,
    Path(PathBuf),
    /// No shim process: the daemon supervises plain containers in threads. Containers then do
    /// not survive the daemon, and isolation is unavailable (for tests of other crates).
    InProcess,
}

#[derive(Debug, Clone)]
pub struct ProcessConfig {
    pub root_dir: PathBuf,
    /// Isolate containers when possible (root on Linux with overlayfs).
    pub isolate: bool,
    pub shim: ShimBinary,
    /// Name of the cgroup (under the daemon's own) that holds `<sandbox>/<container>` cgroups.
    pub cgroup_parent: String,
    /// The node's pod CIDR (`10.244.3.0/24`); None leaves sandboxes with loopback only until
    /// [`ProcessRuntime::set_pod_cidr`] gives one.
    pub pod_cidr: Option<String>,
    /// The node bridge; default: named after the pod CIDR, so that several nodes (and
    /// clusters) on one machine each have their own.
    pub bridge: Option<String>,
    pub log_max_bytes: u64,
    /// Log files kept per container attempt, the current one included.
    pub log_max_files: u32,
}

impl Default for ProcessConfig {
    fn default() -> Self {
        ProcessConfig {
            root_dir: PathBuf::from("/var/lib/flotilla/runtime"),
            isolate: true,
            shim: ShimBinary::CurrentExe,
            cgroup_parent: "flotilla".into(),
            pod_cidr: None,
            bridge: None,
            log_max_bytes: 10 << 20,
            log_max_files: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SandboxRecord {
    id: String,
    config: SandboxConfig,
    created_at: SystemTime,
    ip: Option<IpAddr>,
    netns: Option<String>,
    ready: bool,
    /// Where generated /etc files and (without a kubelet dir) logs live.
    files_dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ContainerRecord {
    id: String,
    sandbox_id: String,
    config: ContainerConfig,
    image_ref: String,
    created_at: SystemTime,
    log_path: PathBuf,
    isolated: bool,
    cgroup: ContainerCgroup,
}

pub struct ProcessRuntime {
    config: ProcessConfig,
    isolated: bool,
    shim_path: Option<PathBuf>,
    images: Option<Arc<dyn ImageSource>>,
    cgroups: Cgroups,
    /// Set once: at start, or when the cluster has allocated the node's CIDR.
    pod_network: std::sync::OnceLock<PodNetwork>,
    sandboxes: Mutex<HashMap<String, SandboxRecord>>,
    containers: Mutex<HashMap<String, ContainerRecord>>,
    /// Serializes bridge setup and address allocation.
    net_lock: tokio::sync::Mutex<()>,
}

/// Why isolated mode is unavailable on this machine, if it is.
pub fn isolation_unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("not Linux".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root".into());
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| l.trim_end().ends_with("overlay")) {
        return Some("the kernel has no overlayfs".into());
    }
    None
}

impl ProcessRuntime {
    /// Opens (or creates) the runtime's state under `config.root_dir` and re-adopts the
    /// sandboxes and containers recorded there.
    pub fn new(mut config: ProcessConfig) -> Result<ProcessRuntime> {
        for sub in ["sandboxes", "containers"] {
            std::fs::create_dir_all(config.root_dir.join(sub))?;
        }
        // Shims run from `/`, and paths in specs must not depend on the daemon's cwd.
        config.root_dir = std::fs::canonicalize(&config.root_dir)?;
        let shim_path = match &config.shim {
            ShimBinary::CurrentExe => Some(std::env::current_exe()?),
            ShimBinary::Path(p) => Some(p.clone()),
            ShimBinary::InProcess => None,
        };
        let mut isolated = config.isolate && isolation_unavailable().is_none();
        if isolated && shim_path.is_none() {
            tracing::warn!("isolation needs a shim binary; running plain host processes");
            isolated = false;
        }
        let cgroups = if isolated {
            Cgroups::detect()
        } else {
            Cgroups::None
        };
        let pod_network = std::sync::OnceLock::new();
        if let (Some(cidr), true) = (&config.pod_cidr, isolated) {
            let _ = pod_network.set(
                PodNetwork::parse(config.bridge.as_deref(), cidr).map_err(RuntimeError::Invalid)?,
            );
        }
        let mut sandboxes = HashMap::new();
        for entry in std::fs::read_dir(config.root_dir.join("sandboxes"))?.flatten() {
            if let Some(mut rec) = read_json::<SandboxRecord>(&entry.path().join("sandbox.json")) {
                if rec
                    .netns
                    .as_deref()
                    .is_some_and(|n| !net::netns_path(n).exists())
                {
                    // The machine rebooted: the namespace is gone.
                    rec.ready = false;
                }
                sandboxes.insert(rec.id.clone(), rec);
            }
        }
        let mut containers = HashMap::new();
        for entry in std::fs::read_dir(config.root_dir.join("containers"))?.flatten() {
            if let Some(rec) = read_json::<ContainerRecord>(&entry.path().join("container.json")) {
                containers.insert(rec.id.clone(), rec);
            }
        }
        tracing::debug!(
            isolated,
            cgroups = cgroups.version(),
            sandboxes = sandboxes.len(),
            containers = containers.len(),
            "process runtime opened"
        );
        Ok(ProcessRuntime {
            config,
            isolated,
            shim_path,
            images: None,
            cgroups,
            pod_network,
            sandboxes: Mutex::new(sandboxes),
            containers: Mutex::new(containers),
            net_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn with_images(mut self, images: Arc<dyn ImageSource>) -> ProcessRuntime {
        self.images = Some(images);
        self
    }

    /// Whether containers run in namespaces with an image root (else plain host processes).
    pub fn isolated(&self) -> bool {
        self.isolated
    }

    /// Gives pods IPs from `cidr` from now on (sandboxes already running keep none). Only
    /// isolated runtimes have pod networks; the first CIDR set stays.
    pub fn set_pod_cidr(&self, cidr: &str) -> Result<()> {
        if !self.isolated {
            return Ok(());
        }
        let net = PodNetwork::parse(self.config.bridge.as_deref(), cidr)
            .map_err(RuntimeError::Invalid)?;
        match self.pod_network.get_or_init(|| net.clone()) {
            current if *current == net => Ok(()),
            current => Err(RuntimeError::Invalid(format!(
                "the pod network is already {}/{}",
                current.network, current.prefix
            ))),
        }
    }

    /// The pod network, if any: bridge and CIDR.
    pub fn pod_network(&self) -> Option<&PodNetwork> {
        self.pod_network.get()
    }

    pub fn root_dir(&self) -> &Path {
        &self.config.root_dir
    }

    /// Removes node-level resources: the bridge and the cgroup parent (tests; a node keeps
    /// them). Sandboxes should be removed first.
    pub async fn remove_node_resources(&self) {
        if let Some(net) = self.pod_network.get() {
            let _ = remove_bridge(&net.bridge).await;
        }
        self.cgroups
            .remove_level(Path::new(&self.config.cgroup_parent));
    }

    fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.root_dir.join("sandboxes").join(id)
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        self.config.root_dir.join("containers").join(id)
    }

    fn sandbox(&self, id: &str) -> Result<SandboxRecord> {
        lock(&self.sandboxes)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("sandbox {id}")))
    }

    fn container(&self, id: &str) -> Result<ContainerRecord> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))
    }

    fn save_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        write_json(&self.sandbox_dir(&rec.id).join("sandbox.json"), rec)?;
        lock(&self.sandboxes).insert(rec.id.clone(), rec.clone());
        Ok(())
    }

    fn sandbox_status_of(rec: &SandboxRecord) -> SandboxStatus {
        SandboxStatus {
            id: rec.id.clone(),
            state: if rec.ready {
                SandboxState::Ready
            } else {
                SandboxState::NotReady
            },
            ip: rec.ip,
            netns: rec.netns.as_deref().map(net::netns_path),
            created_at: rec.created_at,
            config: rec.config.clone(),
        }
    }

    async fn run_sandbox_impl(&self, config: SandboxConfig) -> Result<SandboxStatus> {
        // Idempotent for a pod: a Ready sandbox of the same pod is returned as is.
        let existing = lock(&self.sandboxes)
            .values()
            .find(|s| s.ready && s.config.pod_uid == config.pod_uid && !config.pod_uid.is_empty())
            .cloned();
        if let Some(rec) = existing {
            return Ok(Self::sandbox_status_of(&rec));
        }
        let id = new_id();
        let dir = self.sandbox_dir(&id);
        std::fs::create_dir_all(&dir)?;
        let mut rec = SandboxRecord {
            id: id.clone(),
            config,
            created_at: SystemTime::now(),
            ip: None,
            netns: None,
            ready: true,
            files_dir: dir.clone(),
        };
        if self.isolated && !rec.config.host_network {
            let name = format!("flotilla-{id}");
            rec.netns = Some(name.clone());
            if let Err(e) = self.setup_network(&mut rec, &name).await {
                let _ = net::delete_netns(&name).await;
                let _ = self.release_ip(&id).await;
                let _ = std::fs::remove_dir_all(&dir);
                return Err(RuntimeError::Other(format!("sandbox network: {e}")));
            }
        }
        write_etc_files(&rec)?;
        self.save_sandbox(&rec)?;
        Ok(Self::sandbox_status_of(&rec))
    }

    async fn setup_network(
        &self,
        rec: &mut SandboxRecord,
        netns: &str,
    ) -> std::result::Result<(), String> {
        net::create_netns(netns).await?;
        if let Some(pod_net) = self.pod_network.get() {
            let _guard = self.net_lock.lock().await;
            net::ensure_bridge(pod_net).await?;
            let addr = net::Ipam::new(&self.config.root_dir)
                .allocate(pod_net, &rec.id)
                .map_err(|e| e.to_string())?;
            net::attach(pod_net, netns, &rec.id, addr).await?;
            rec.ip = Some(IpAddr::V4(addr));
        }
        Ok(())
    }

    async fn release_ip(&self, id: &str) -> std::io::Result<()> {
        if self.pod_network.get().is_some() {
            let _guard = self.net_lock.lock().await;
            net::Ipam::new(&self.config.root_dir).release(id)?;
        }
        Ok(())
    }

    async fn stop_sandbox_impl(&self, id: &str) -> Result<()> {
        let Ok(mut rec) = self.sandbox(id) else {
            return Ok(());
        };
        let ids: Vec<String> = lock(&self.containers)
            .values()
            .filter(|c| c.sandbox_id == id)
            .map(|c| c.id.clone())
            .collect();
        for cid in ids {
            self.stop_impl(&cid, Duration::ZERO).await?;
        }
        if let Some(name) = &rec.netns {
            net::delete_netns(name).await.map_err(RuntimeError::Other)?;
            if self.pod_network.get().is_some() {
                // The veth pair went with the namespace; make sure of its host end.
                let veth = net::host_veth(id);
                if Path::new("/sys/class/net").join(&veth).exists() {
                    let _ = net::ip(&["link", "delete", &veth]).await;
                }
            }
        }
        self.release_ip(id).await?;
        // The directory is gone when another runtime instance removed the sandbox.
        if rec.ready {
            rec.ready = false;
            if self.sandbox_dir(id).exists() {
                self.save_sandbox(&rec)?;
            } else {
                lock(&self.sandboxes).insert(rec.id.clone(), rec);
            }
        }
        Ok(())
    }

    async fn remove_sandbox_impl(&self, id: &str) -> Result<()> {
        if self.sandbox(id).is_err() {
            return Ok(());
        }
        self.stop_sandbox_impl(id).await?;
        let ids: Vec<String> = lock(&self.containers)
            .values()
            .filter(|c| c.sandbox_id == id)
            .map(|c| c.id.clone())
            .collect();
        for cid in ids {
            self.remove_impl(&cid).await?;
        }
        self.cgroups
            .remove_level(&Path::new(&self.config.cgroup_parent).join(id));
        let dir = self.sandbox_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        lock(&self.sandboxes).remove(id);
        Ok(())
    }

    async fn create_impl(&self, sandbox_id: &str, config: ContainerConfig) -> Result<String> {
        let sb = self.sandbox(sandbox_id)?;
        if !sb.ready {
            return Err(RuntimeError::Invalid(format!(
                "sandbox {sandbox_id} is not ready"
            )));
        }
        if config.name.is_empty() || config.name.contains('/') {
            return Err(RuntimeError::Invalid(format!(
                "container name {:?}",
                config.name
            )));
        }
        let image = match &self.images {
            Some(src) => {
                Some(
                    src.resolve(&config.image)
                        .ok_or_else(|| RuntimeError::ImagePull {
                            image: config.image.clone(),
                            message: "not in the local image store".into(),
                        })?,
                )
            }
            None if self.isolated => {
                return Err(RuntimeError::Invalid(
                    "isolated containers need an image source".into(),
                ));
            }
            None => None,
        };
        let argv = container_argv(&config, image.as_ref())?;
        let env = container_env(&config, image.as_ref(), self.isolated, &sb);
        let cwd = config
            .working_dir
            .clone()
            .filter(|d| !d.is_empty())
            .or_else(|| {
                image
                    .as_ref()
                    .filter(|_| self.isolated)
                    .and_then(|i| i.working_dir.clone())
                    .filter(|d| !d.is_empty())
            });
        let id = new_id();
        let dir = self.container_dir(&id);
        std::fs::create_dir_all(&dir)?;
        let logs = if sb.config.dir.as_os_str().is_empty() {
            sb.files_dir.join("logs")
        } else {
            sb.config.dir.join("logs")
        };
        let log_path = logs
            .join(&config.name)
            .join(format!("{}.log", config.attempt));
        let mut rec = ContainerRecord {
            id: id.clone(),
            sandbox_id: sandbox_id.to_owned(),
            image_ref: image
                .as_ref()
                .map(|i| i.id.clone())
                .unwrap_or_else(|| config.image.clone()),
            config,
            created_at: SystemTime::now(),
            log_path: log_path.clone(),
            isolated: self.isolated,
            cgroup: ContainerCgroup::default(),
        };
        let result = self.prepare(&mut rec, &sb, image.as_ref(), argv, env, cwd, &dir);
        if let Err(e) = result {
            let _ = cgroup::remove(&rec.cgroup);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        lock(&self.containers).insert(id.clone(), rec);
        Ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    fn prepare(
        &self,
        rec: &mut ContainerRecord,
        sb: &SandboxRecord,
        image: Option<&ResolvedImage>,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        cwd: Option<String>,
        dir: &Path,
    ) -> Result<()> {
        let isolation = match image.filter(|_| self.isolated) {
            None => None,
            Some(image) => {
                let rel = Path::new(&self.config.cgroup_parent)
                    .join(&sb.id)
                    .join(&rec.id);
                rec.cgroup = self
                    .cgroups
                    .create(&rel, &rec.config.limits)
                    .map_err(|e| RuntimeError::Other(format!("cgroup: {e}")))?;
                for sub in ["upper", "work", "rootfs"] {
                    std::fs::create_dir_all(dir.join(sub))?;
                }
                let mut lower_dirs = vec![image.rootfs.clone()];
                lower_dirs.extend(image.lower_layers.iter().cloned());
                let own_uts = !sb.config.host_network;
                Some(Isolation {
                    lower_dirs,
                    upper_dir: dir.join("upper"),
                    work_dir: dir.join("work"),
                    rootfs: dir.join("rootfs"),
                    netns: sb.netns.as_deref().map(net::netns_path),
                    hostname: own_uts.then(|| sandbox_hostname(&sb.config)),
                    files: ["hosts", "hostname", "resolv.conf"]
                        .iter()
                        .map(|f| (sb.files_dir.join(f), format!("/etc/{f}")))
                        .collect(),
                    mounts: rec.config.mounts.clone(),
                    cgroup_procs: rec.cgroup.procs.clone(),
                    oom_file: rec.cgroup.oom_file.clone(),
                    user: image.user.clone().filter(|u| !u.is_empty()),
                })
            }
        };
        let spec = ShimSpec {
            argv,
            env,
            cwd,
            log_path: rec.log_path.clone(),
            log_max_bytes: self.config.log_max_bytes,
            log_max_files: self.config.log_max_files,
            isolation,
        };
        write_json(&dir.join(spec::SPEC), &spec)?;
        write_json(&dir.join("container.json"), &*rec)?;
        Ok(())
    }

    async fn start_impl(&self, id: &str) -> Result<()> {
        let rec = self.container(id)?;
        let dir = self.container_dir(id);
        if let Some(exited) = read_json::<Exited>(&dir.join(spec::EXIT)) {
            return Err(RuntimeError::Invalid(match exited.start_error {
                Some(e) => format!("container {id} failed to start: {e}"),
                None => format!("container {id} has exited"),
            }));
        }
        if dir.join(spec::STARTED).exists() {
            return Ok(());
        }
        let Some(shim_path) = &self.shim_path else {
            return self.start_in_process(&dir);
        };
        let shim_log = std::fs::File::create(dir.join(spec::SHIM_LOG))?;
        let mut child = tokio::process::Command::new(shim_path)
            .arg(SHIM_SUBCOMMAND)
            .arg("run")
            .arg(&dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(shim_log)
            .spawn()
            .map_err(|e| {
                RuntimeError::Other(format!("starting shim {}: {e}", shim_path.display()))
            })?;
        let stdout = child.stdout.take();
        // The shim exits when the container does; reap it then (or never, if we go first).
        let reap = async move {
            let _ = child.wait().await;
        };
        let mut line = String::new();
        let answer = async {
            if let Some(out) = stdout {
                let mut reader = tokio::io::BufReader::new(out);
                let _ = reader.read_line(&mut line).await;
            }
        };
        let answered = tokio::time::timeout(Duration::from_secs(30), answer).await;
        tokio::spawn(reap);
        if answered.is_err() {
            return Err(RuntimeError::Other(format!(
                "shim of container {id} did not answer in 30 s"
            )));
        }
        let line = line.trim_end();
        if line.starts_with("ok ") {
            Ok(())
        } else if let Some(msg) = line.strip_prefix("error ") {
            Err(RuntimeError::Other(format!(
                "starting container {}: {msg}",
                rec.config.name
            )))
        } else {
            let shim_err = std::fs::read_to_string(dir.join(spec::SHIM_LOG)).unwrap_or_default();
            let msg = format!(
                "shim {} exited without answering (does it route `{SHIM_SUBCOMMAND}`?): {}",
                shim_path.display(),
                shim_err.lines().last().unwrap_or("")
            );
            shim::record_start_error(&dir, &msg);
            Err(RuntimeError::Other(msg))
        }
    }

    fn start_in_process(&self, dir: &Path) -> Result<()> {
        let spec = read_json::<ShimSpec>(&dir.join(spec::SPEC))
            .ok_or_else(|| RuntimeError::Other("cannot read the container spec".into()))?;
        let launched = log::LogWriter::open(&spec.log_path, spec.log_max_bytes, spec.log_max_files)
            .map_err(|e| format!("log file {}: {e}", spec.log_path.display()))
            .and_then(|log| Ok((log, shim::launch(dir, &spec)?)));
        match launched {
            Err(msg) => {
                shim::record_start_error(dir, &msg);
                Err(RuntimeError::Other(msg))
            }
            Ok((log, launched)) => {
                let dir = dir.to_owned();
                std::thread::Builder::new()
                    .name("container-supervisor".into())
                    .spawn(move || shim::supervise(&dir, &spec, log, launched))?;
                Ok(())
            }
        }
    }

    fn status_of(&self, rec: &ContainerRecord) -> ContainerStatus {
        let dir = self.container_dir(&rec.id);
        let started = read_json::<Started>(&dir.join(spec::STARTED));
        let mut exited = read_json::<Exited>(&dir.join(spec::EXIT));
        if exited.is_none()
            && let Some(s) = &started
            && !spec::alive(s.pid, s.pid_start)
            && !spec::alive(s.shim_pid, s.shim_start)
        {
            // Both gone without a record (the shim was killed, or the machine rebooted).
            exited = read_json::<Exited>(&dir.join(spec::EXIT)).or_else(|| {
                let lost = Exited {
                    exit_code: 255,
                    signal: None,
                    finished_at: SystemTime::now(),
                    oom_killed: false,
                    start_error: None,
                    lost: true,
                };
                let _ = write_json(&dir.join(spec::EXIT), &lost);
                Some(lost)
            });
        }
        let (state, reason, message) = match (&started, &exited) {
            (_, Some(e)) => {
                let (reason, message) = if let Some(err) = &e.start_error {
                    ("StartError", Some(err.clone()))
                } else if e.oom_killed {
                    ("OOMKilled", None)
                } else if e.lost {
                    ("Unknown", Some("the container's supervisor is gone".into()))
                } else if e.exit_code == 0 {
                    ("Completed", None)
                } else {
                    ("Error", None)
                };
                (ContainerState::Exited, Some(reason.to_owned()), message)
            }
            (Some(_), None) => (ContainerState::Running, None, None),
            (None, None) => (ContainerState::Created, None, None),
        };
        ContainerStatus {
            id: rec.id.clone(),
            sandbox_id: rec.sandbox_id.clone(),
            name: rec.config.name.clone(),
            attempt: rec.config.attempt,
            state,
            image: rec.config.image.clone(),
            image_ref: rec.image_ref.clone(),
            pid: started
                .as_ref()
                .filter(|_| state == ContainerState::Running)
                .map(|s| s.pid),
            created_at: rec.created_at,
            started_at: started.as_ref().map(|s| s.started_at),
            finished_at: exited.as_ref().map(|e| e.finished_at),
            exit_code: exited.as_ref().map(|e| e.exit_code),
            reason,
            message,
            log_path: rec.log_path.clone(),
        }
    }

    fn signal(&self, rec: &ContainerRecord, started: &Started, sig: nix::sys::signal::Signal) {
        use nix::sys::signal::{kill, killpg};
        use nix::unistd::Pid;
        if !spec::alive(started.pid, started.pid_start) {
            return;
        }
        let pid = Pid::from_raw(started.pid as i32);
        if rec.isolated {
            // PID 1 of the container's namespace; SIGKILL takes the whole namespace down.
            let _ = kill(pid, sig);
        } else if killpg(pid, sig).is_err() {
            let _ = kill(pid, sig);
        }
    }

    /// Waits for `exit.json`; true once the container has exited.
    async fn wait_exit(&self, dir: &Path, started: &Started, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if dir.join(spec::EXIT).exists() {
                return true;
            }
            if !spec::alive(started.pid, started.pid_start)
                && !spec::alive(started.shim_pid, started.shim_start)
            {
                // No supervisor left to write it.
                if !dir.join(spec::EXIT).exists() {
                    let exited = Exited {
                        exit_code: 137,
                        signal: Some(9),
                        finished_at: SystemTime::now(),
                        oom_killed: false,
                        start_error: None,
                        lost: false,
                    };
                    let _ = write_json(&dir.join(spec::EXIT), &exited);
                }
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            tokio::time::sleep((deadline - now).min(Duration::from_millis(10))).await;
        }
    }

    async fn stop_impl(&self, id: &str, grace: Duration) -> Result<()> {
        use nix::sys::signal::Signal;
        let rec = self.container(id)?;
        let dir = self.container_dir(id);
        let Some(started) = read_json::<Started>(&dir.join(spec::STARTED)) else {
            return Ok(());
        };
        if dir.join(spec::EXIT).exists() {
            return Ok(());
        }
        self.signal(&rec, &started, Signal::SIGTERM);
        if self.wait_exit(&dir, &started, grace).await {
            return Ok(());
        }
        self.signal(&rec, &started, Signal::SIGKILL);
        if self
            .wait_exit(&dir, &started, Duration::from_secs(10))
            .await
        {
            return Ok(());
        }
        Err(RuntimeError::Other(format!(
            "container {id} did not exit after SIGKILL"
        )))
    }

    async fn remove_impl(&self, id: &str) -> Result<()> {
        let Ok(rec) = self.container(id) else {
            return Ok(());
        };
        self.stop_impl(id, Duration::ZERO).await?;
        cgroup::remove(&rec.cgroup)
            .map_err(|e| RuntimeError::Other(format!("removing the cgroup of {id}: {e}")))?;
        let dir = self.container_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        lock(&self.containers).remove(id);
        Ok(())
    }

    /// The command line of an exec: the command itself (plain) or the shim joining the
    /// container's namespaces.
    fn exec_command(&self, id: &str, cmd: Vec<String>, tty: bool) -> Result<ExecCommand> {
        let rec = self.container(id)?;
        if self.status_of(&rec).state != ContainerState::Running {
            return Err(RuntimeError::Invalid(format!(
                "container {id} is not running"
            )));
        }
        if cmd.is_empty() {
            return Err(RuntimeError::Invalid("empty exec command".into()));
        }
        let dir = self.container_dir(id);
        let spec = read_json::<ShimSpec>(&dir.join(spec::SPEC))
            .ok_or_else(|| RuntimeError::Other("cannot read the container spec".into()))?;
        let via_shim = spec.isolation.is_some() && self.shim_path.is_some();
        let mut argv: Vec<std::ffi::OsString> = match &self.shim_path {
            Some(shim) if via_shim => [shim.as_os_str(), SHIM_SUBCOMMAND.as_ref(), "exec".as_ref()]
                .into_iter()
                .chain([dir.as_os_str(), "--".as_ref()])
                .map(Into::into)
                .chain(cmd.iter().map(Into::into))
                .collect(),
            _ => cmd.iter().map(Into::into).collect(),
        };
        // A terminal must be the command's controlling terminal (for ^C, job control), which
        // takes a new session: the shim's `tty` mode sets that up and then becomes the command.
        let new_session = tty && self.shim_path.is_some();
        if let (true, Some(shim)) = (new_session, &self.shim_path) {
            let prefix = [
                shim.as_os_str(),
                SHIM_SUBCOMMAND.as_ref(),
                "tty".as_ref(),
                "--".as_ref(),
            ];
            argv.splice(0..0, prefix.into_iter().map(Into::into));
        }
        let mut command = tokio::process::Command::new(&argv[0]);
        command.args(&argv[1..]);
        if !via_shim {
            command
                .env_clear()
                .envs(spec.env.iter().map(|(k, v)| (k, v)));
            if let Some(cwd) = spec.cwd.as_deref().filter(|d| Path::new(d).is_dir()) {
                command.current_dir(cwd);
            }
            // Its own process group, so a timeout kills what it started too (a new session
            // does the same, and setsid refuses a group leader).
            if !new_session {
                command.process_group(0);
            }
        }
        Ok(ExecCommand { command, via_shim })
    }
}

struct ExecCommand {
    command: tokio::process::Command,
    /// Run through the exec shim (which kills the command on SIGTERM and reaps it).
    via_shim: bool,
}

/// Ends an exec that is no longer wanted. The exec shim gets SIGTERM, so the command dies as
/// its child (SIGKILLing the shim would orphan the command to the host's init); a plain
/// command is killed with its process group.
fn cancel_exec(pid: u32, via_shim: bool) {
    use nix::sys::signal::{Signal, kill, killpg};
    let pid = nix::unistd::Pid::from_raw(pid as i32);
    if via_shim {
        let _ = kill(pid, Signal::SIGTERM);
    } else if killpg(pid, Signal::SIGKILL).is_err() {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Cancels an exec whose session is dropped before it ended.
struct CancelOnDrop {
    pid: Option<u32>,
    via_shim: bool,
}

impl CancelOnDrop {
    fn disarm(&mut self) {
        self.pid = None;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            cancel_exec(pid, self.via_shim);
        }
    }
}

fn exit_code_of(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// 24 hex digits from the kernel's random source.
fn new_id() -> String {
    use std::io::Read as _;
    let mut bytes = [0u8; 12];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .is_ok();
    if !ok {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes.copy_from_slice(&nanos.to_le_bytes()[..12]);
        bytes[0] ^= std::process::id() as u8;
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn sandbox_hostname(config: &SandboxConfig) -> String {
    let name = if config.hostname.is_empty() {
        &config.name
    } else {
        &config.hostname
    };
    // A hostname is at most 64 bytes.
    name.chars().take(63).collect()
}

/// Writes the sandbox's `hosts`, `hostname` and `resolv.conf`.
fn write_etc_files(rec: &SandboxRecord) -> std::io::Result<()> {
    let dir = &rec.files_dir;
    let config = &rec.config;
    if config.host_network {
        let _ = std::fs::copy("/etc/hosts", dir.join("hosts"))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        std::fs::write(dir.join("hostname"), host)?;
    } else {
        let hostname = sandbox_hostname(config);
        let mut hosts = String::from(
            "# Kubernetes-managed hosts file (flotilla).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
        );
        let names = if config.domain.is_empty() {
            hostname.clone()
        } else {
            format!("{hostname}.{}\t{hostname}", config.domain)
        };
        match rec.ip {
            Some(ip) => hosts.push_str(&format!("{ip}\t{names}\n")),
            None => hosts.push_str(&format!("127.0.1.1\t{names}\n")),
        }
        for (ip, names) in &config.hosts {
            hosts.push_str(&format!("{ip}\t{}\n", names.join("\t")));
        }
        std::fs::write(dir.join("hosts"), hosts)?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
    }
    let resolv = if config.dns_servers.is_empty() && config.dns_searches.is_empty() {
        std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default()
    } else {
        let mut r = String::new();
        for s in &config.dns_servers {
            r.push_str(&format!("nameserver {s}\n"));
        }
        if !config.dns_searches.is_empty() {
            r.push_str(&format!("search {}\n", config.dns_searches.join(" ")));
        }
        r.push_str("options ndots:5\n");
        r
    };
    std::fs::write(dir.join("resolv.conf"), resolv)
}

/// Kubernetes semantics: `command` replaces the image's ENTRYPOINT (and drops its CMD), `args`
/// replace its CMD.
fn container_argv(config: &ContainerConfig, image: Option<&ResolvedImage>) -> Result<Vec<String>> {
    let (entrypoint, cmd) = match image {
        Some(i) => (i.entrypoint.clone(), i.cmd.clone()),
        None => (Vec::new(), Vec::new()),
    };
    let argv: Vec<String> = match (config.command.is_empty(), config.args.is_empty()) {
        (false, _) => config.command.iter().chain(&config.args).cloned().collect(),
        (true, false) => entrypoint.into_iter().chain(config.args.clone()).collect(),
        (true, true) => entrypoint.into_iter().chain(cmd).collect(),
    };
    if argv.first().is_none_or(|a| a.is_empty()) {
        return Err(RuntimeError::Invalid(format!(
            "container {:?}: no command given and the image has none",
            config.name
        )));
    }
    Ok(argv)
}

/// The image's env, then the container's (later entries win), with PATH and HOSTNAME filled in
/// as container runtimes do.
fn container_env(
    config: &ContainerConfig,
    image: Option<&ResolvedImage>,
    isolated: bool,
    sb: &SandboxRecord,
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: String, v: String| {
        env.retain(|(key, _)| *key != k);
        env.push((k, v));
    };
    let default_path = if isolated {
        DEFAULT_PATH.to_owned()
    } else {
        std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.to_owned())
    };
    set("PATH".into(), default_path);
    if isolated && !sb.config.host_network {
        set("HOSTNAME".into(), sandbox_hostname(&sb.config));
    }
    for kv in image.map(|i| i.env.as_slice()).unwrap_or_default() {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        set(k.to_owned(), v.to_owned());
    }
    for (k, v) in &config.env {
        set(k.clone(), v.clone());
    }
    env
}

impl Runtime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn run_sandbox(&self, config: SandboxConfig) -> BoxFuture<'_, Result<SandboxStatus>> {
        self.run_sandbox_impl(config).boxed()
    }

    fn stop_sandbox(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        let id = id.to_owned();
        async move { self.stop_sandbox_impl(&id).await }.boxed()
    }

    fn remove_sandbox(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        let id = id.to_owned();
        async move { self.remove_sandbox_impl(&id).await }.boxed()
    }

    fn sandbox_status(&self, id: &str) -> BoxFuture<'_, Result<SandboxStatus>> {
        let result = self.sandbox(id).map(|r| Self::sandbox_status_of(&r));
        async move { result }.boxed()
    }

    fn list_sandboxes(&self) -> BoxFuture<'_, Result<Vec<SandboxStatus>>> {
        let list = lock(&self.sandboxes)
            .values()
            .map(Self::sandbox_status_of)
            .collect();
        async move { Ok(list) }.boxed()
    }

    fn pull_image(&self, image: &str, policy: PullPolicy) -> BoxFuture<'_, Result<ImageInfo>> {
        let image = image.to_owned();
        async move {
            match &self.images {
                Some(src) => src.pull(&image, policy).await.map(|i| i.info()),
                // Plain host processes need no image.
                None => Ok(host_image(&image)),
            }
        }
        .boxed()
    }

    fn image_status(&self, image: &str) -> BoxFuture<'_, Result<Option<ImageInfo>>> {
        let info = match &self.images {
            Some(src) => src.resolve(image).map(|i| i.info()),
            None => Some(host_image(image)),
        };
        async move { Ok(info) }.boxed()
    }

    fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
    ) -> BoxFuture<'_, Result<String>> {
        let sandbox_id = sandbox_id.to_owned();
        async move { self.create_impl(&sandbox_id, config).await }.boxed()
    }

    fn start_container(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        let id = id.to_owned();
        async move { self.start_impl(&id).await }.boxed()
    }

    fn stop_container(&self, id: &str, grace: Duration) -> BoxFuture<'_, Result<()>> {
        let id = id.to_owned();
        async move { self.stop_impl(&id, grace).await }.boxed()
    }

    fn remove_container(&self, id: &str) -> BoxFuture<'_, Result<()>> {
        let id = id.to_owned();
        async move { self.remove_impl(&id).await }.boxed()
    }

    fn container_status(&self, id: &str) -> BoxFuture<'_, Result<ContainerStatus>> {
        let result = self.container(id).map(|rec| self.status_of(&rec));
        async move { result }.boxed()
    }

    fn list_containers(&self) -> BoxFuture<'_, Result<Vec<ContainerStatus>>> {
        let records: Vec<ContainerRecord> = lock(&self.containers).values().cloned().collect();
        let list = records.iter().map(|r| self.status_of(r)).collect();
        async move { Ok(list) }.boxed()
    }

    fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<ExecOutput>> {
        let command = self.exec_command(id, cmd, false);
        async move {
            let ExecCommand {
                mut command,
                via_shim,
            } = command?;
            command
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = command.spawn()?;
            let pid = child.id();
            // Cancels the command if this future is dropped (a caller's own timeout).
            let mut guard = CancelOnDrop { pid, via_shim };
            let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
            let finished = tokio::time::timeout(timeout, async {
                let read_out = async {
                    let mut v = Vec::new();
                    if let Some(o) = out.as_mut() {
                        let _ = o.read_to_end(&mut v).await;
                    }
                    v
                };
                let read_err = async {
                    let mut v = Vec::new();
                    if let Some(e) = err.as_mut() {
                        let _ = e.read_to_end(&mut v).await;
                    }
                    v
                };
                tokio::join!(read_out, read_err, child.wait())
            })
            .await;
            guard.disarm();
            match finished {
                Ok((stdout, stderr, status)) => Ok(ExecOutput {
                    exit_code: exit_code_of(status?),
                    stdout,
                    stderr,
                }),
                Err(_) => {
                    if let Some(pid) = pid {
                        cancel_exec(pid, via_shim);
                    }
                    if tokio::time::timeout(Duration::from_secs(2), child.wait())
                        .await
                        .is_err()
                    {
                        let _ = child.kill().await;
                    }
                    Err(RuntimeError::Other(format!(
                        "command timed out after {timeout:?}"
                    )))
                }
            }
        }
        .boxed()
    }

    fn exec(
        &self,
        id: &str,
        cmd: Vec<String>,
        stdin: bool,
        tty: bool,
    ) -> BoxFuture<'_, Result<ExecSession>> {
        let command = self.exec_command(id, cmd, tty);
        async move {
            let ExecCommand {
                mut command,
                via_shim,
            } = command?;
            if tty {
                return exec_on_terminal(command, via_shim);
            }
            command
                .stdin(if stdin {
                    std::process::Stdio::piped()
                } else {
                    std::process::Stdio::null()
                })
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            let mut child = command.spawn()?;
            let stdin = child
                .stdin
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>);
            let stdout = child
                .stdout
                .take()
                .ok_or_else(|| RuntimeError::Other("no stdout".into()))?;
            let stderr = child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>);
            Ok(ExecSession {
                stdin,
                stdout: Box::new(stdout),
                stderr,
                resize: None,
                exit: exit_of(child, via_shim),
            })
        }
        .boxed()
    }
}

/// The exit code of an exec'd command; dropping it before the end cancels the command.
fn exit_of(mut child: tokio::process::Child, via_shim: bool) -> BoxFuture<'static, Result<i32>> {
    let mut guard = CancelOnDrop {
        pid: child.id(),
        via_shim,
    };
    async move {
        let status = child.wait().await;
        guard.disarm();
        Ok(exit_code_of(status?))
    }
    .boxed()
}

/// `exec -t`: the command runs in a new session whose controlling terminal is a fresh pty.
fn exec_on_terminal(mut command: tokio::process::Command, via_shim: bool) -> Result<ExecSession> {
    let (master, terminal) = pty::open()?;
    command
        .stdin(terminal.try_clone()?)
        .stdout(terminal.try_clone()?)
        .stderr(terminal);
    let child = command.spawn()?;
    // Our copies of the terminal end go with the command, so that reads of the master end
    // see the end once the exec'd processes have closed theirs.
    drop(command);
    let pty::Master {
        reader,
        writer,
        control,
    } = master;
    Ok(ExecSession {
        stdin: Some(Box::new(writer)),
        stdout: Box::new(reader),
        stderr: None,
        resize: Some(Box::new(move |cols, rows| {
            pty::resize(&control, cols, rows)
        })),
        exit: exit_of(child, via_shim),
    })
}

fn host_image(image: &str) -> ImageInfo {
    ImageInfo {
        id: image.to_owned(),
        references: vec![image.to_owned()],
        size_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_command_semantics() {
        let image = ResolvedImage {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["default".into()],
            ..Default::default()
        };
        let cfg = |command: &[&str], args: &[&str]| ContainerConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            args: args.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let argv = |c: &ContainerConfig| container_argv(c, Some(&image)).unwrap();
        assert_eq!(argv(&cfg(&[], &[])), ["/entry", "default"]);
        assert_eq!(argv(&cfg(&[], &["x"])), ["/entry", "x"]);
        assert_eq!(argv(&cfg(&["sh"], &[])), ["sh"]);
        assert_eq!(argv(&cfg(&["sh"], &["-c", "true"])), ["sh", "-c", "true"]);
        assert!(container_argv(&cfg(&[], &[]), None).is_err());
    }
}
