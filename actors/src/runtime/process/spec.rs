//! The files a container directory holds, shared by the runtime and the shim: what to run
//! (`spec.json`, written at create), that it started (`started.json`, by the shim) and how it
//! ended (`exit.json`, by the shim). Files are replaced atomically, so a reader never sees half.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::runtime::Mount;

pub(crate) const SPEC: &str = "spec.json";
pub(crate) const STARTED: &str = "started.json";
pub(crate) const EXIT: &str = "exit.json";
pub(crate) const SHIM_LOG: &str = "shim.log";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShimSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<String>,
    pub log_path: PathBuf,
    pub log_max_bytes: u64,
    pub log_max_files: u32,
    /// Present in isolated mode.
    pub isolation: Option<Isolation>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Isolation {
    /// Overlay lower directories, topmost first.
    pub lower_dirs: Vec<PathBuf>,
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
    /// Where the overlay is mounted (inside the container's own mount namespace only).
    pub rootfs: PathBuf,
    /// The sandbox's network namespace; None shares the host's.
    pub netns: Option<PathBuf>,
    /// None keeps the host's UTS namespace (hostNetwork pods).
    pub hostname: Option<String>,
    /// Host files bind-mounted at container paths (`/etc/hosts`, …).
    pub files: Vec<(PathBuf, String)>,
    pub mounts: Vec<Mount>,
    /// `cgroup.procs` files the container joins before it runs.
    pub cgroup_procs: Vec<PathBuf>,
    /// `memory.oom_control` (v1) or `memory.events` (v2): its `oom_kill` counter.
    pub oom_file: Option<PathBuf>,
    /// The image's `USER` (`uid[:gid]` or a name from the image's /etc/passwd).
    pub user: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Started {
    pub shim_pid: u32,
    pub shim_start: u64,
    /// The container's process (PID 1 of its namespace when isolated), as the host sees it.
    pub pid: u32,
    pub pid_start: u64,
    pub started_at: SystemTime,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Exited {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: SystemTime,
    pub oom_killed: bool,
    /// Set when the process never ran (bad command, mount failure, …).
    pub start_error: Option<String>,
    /// Synthesised by the runtime: the container and its supervisor vanished unrecorded.
    #[serde(default)]
    pub lost: bool,
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let data = serde_json::to_vec(value).map_err(io::Error::other)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    let data = std::fs::read(path).ok()?;
    serde_json::from_slice(&data).ok()
}

/// The process's start time in clock ticks (field 22 of /proc/PID/stat), which tells a process
/// from a later one that reused its PID; None for a zombie or a missing process.
pub(crate) fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // After the state come fields 4…; starttime is field 22.
    fields.nth(18)?.parse().ok()
}

pub(crate) fn alive(pid: u32, start: u64) -> bool {
    pid != 0 && proc_start(pid) == Some(start)
}
