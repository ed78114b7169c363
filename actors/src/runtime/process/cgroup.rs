//! Per-container cgroups under the cgroup the node daemon runs in, v1 or v2 (detected): memory,
//! cpu quota and pids limits, and the OOM-kill counter.

use std::io;
use std::path::{Path, PathBuf};

use crate::runtime::Limits;

const V1_CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const CFS_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone)]
pub(crate) enum Cgroups {
    /// One directory per controller: the daemon's own cgroup in that hierarchy.
    V1(Vec<(&'static str, PathBuf)>),
    /// The daemon's cgroup in the unified hierarchy.
    V2(PathBuf),
    None,
}

/// What a created container cgroup consists of.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct ContainerCgroup {
    pub dirs: Vec<PathBuf>,
    pub procs: Vec<PathBuf>,
    pub oom_file: Option<PathBuf>,
}

impl Cgroups {
    pub(crate) fn detect() -> Cgroups {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        // Pure v2 (the unified hierarchy mounted at /sys/fs/cgroup with controllers).
        if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            let rel = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .unwrap_or("/");
            return Cgroups::V2(join_rel(Path::new("/sys/fs/cgroup"), rel));
        }
        let mut dirs = Vec::new();
        for ctrl in V1_CONTROLLERS {
            let Some(rel) = own.lines().find_map(|l| {
                let mut it = l.splitn(3, ':');
                let (_, ctrls, path) = (it.next()?, it.next()?, it.next()?);
                ctrls.split(',').any(|c| c == ctrl).then_some(path)
            }) else {
                continue;
            };
            // mountinfo: id parent maj:min root mountpoint opts … - fstype source superopts
            let mount = mountinfo.lines().find_map(|l| {
                let (pre, post) = l.split_once(" - ")?;
                let mut post = post.split_whitespace();
                if post.next()? != "cgroup" {
                    return None;
                }
                let superopts = post.nth(1)?;
                if !superopts.split(',').any(|o| o == ctrl) {
                    return None;
                }
                let f: Vec<&str> = pre.split_whitespace().collect();
                Some((f.get(3)?.to_string(), PathBuf::from(f.get(4)?)))
            });
            let Some((root, mountpoint)) = mount else {
                continue;
            };
            let rel = rel.strip_prefix(root.as_str()).unwrap_or(rel);
            dirs.push((ctrl, join_rel(&mountpoint, rel)));
        }
        if dirs.is_empty() {
            Cgroups::None
        } else {
            Cgroups::V1(dirs)
        }
    }

    pub(crate) fn version(&self) -> &'static str {
        match self {
            Cgroups::V1(_) => "v1",
            Cgroups::V2(_) => "v2",
            Cgroups::None => "none",
        }
    }

    /// Creates `<daemon cgroup>/<rel>` with the limits; `rel` is `parent/sandbox/container`.
    pub(crate) fn create(&self, rel: &Path, limits: &Limits) -> io::Result<ContainerCgroup> {
        let mut cg = ContainerCgroup::default();
        match self {
            Cgroups::None => {
                if *limits != Limits::default() {
                    return Err(io::Error::other("no cgroup hierarchy to enforce limits"));
                }
            }
            Cgroups::V1(dirs) => {
                for (ctrl, base) in dirs {
                    let dir = base.join(rel);
                    std::fs::create_dir_all(&dir)?;
                    cg.dirs.push(dir.clone());
                    cg.procs.push(dir.join("cgroup.procs"));
                    match *ctrl {
                        "memory" => {
                            if let Some(bytes) = limits.memory_bytes {
                                write(&dir, "memory.limit_in_bytes", &bytes.to_string())?;
                                // No swap beyond the limit (the file exists with swap accounting).
                                let memsw = dir.join("memory.memsw.limit_in_bytes");
                                if memsw.exists() {
                                    write(&dir, "memory.memsw.limit_in_bytes", &bytes.to_string())?;
                                }
                            }
                            cg.oom_file = Some(dir.join("memory.oom_control"));
                        }
                        "cpu" => {
                            if let Some(millis) = limits.cpu_millis {
                                let quota = (millis * CFS_PERIOD_US / 1000).max(1000);
                                write(&dir, "cpu.cfs_period_us", &CFS_PERIOD_US.to_string())?;
                                write(&dir, "cpu.cfs_quota_us", &quota.to_string())?;
                            }
                        }
                        "pids" => {
                            if let Some(pids) = limits.pids {
                                write(&dir, "pids.max", &pids.to_string())?;
                            }
                        }
                        _ => {}
                    }
                }
                if limits.memory_bytes.is_some() && cg.oom_file.is_none() {
                    return Err(io::Error::other("no memory cgroup controller"));
                }
            }
            Cgroups::V2(base) => {
                // Controllers must be enabled on every level above the container's cgroup.
                let mut level = base.clone();
                for part in rel.parent().into_iter().flat_map(|p| p.components()) {
                    let _ =
                        std::fs::write(level.join("cgroup.subtree_control"), "+memory +cpu +pids");
                    level.push(part);
                    std::fs::create_dir_all(&level)?;
                }
                let _ = std::fs::write(level.join("cgroup.subtree_control"), "+memory +cpu +pids");
                let dir = base.join(rel);
                std::fs::create_dir_all(&dir)?;
                cg.dirs.push(dir.clone());
                cg.procs.push(dir.join("cgroup.procs"));
                // A v2 cgroup holding processes cannot hand controllers to its children (the
                // "no internal processes" rule): the daemon needs a delegated cgroup of its own.
                let hint = |e: io::Error| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "{e} (are the memory/cpu/pids controllers delegated below {}?)",
                            base.display()
                        ),
                    )
                };
                if let Some(bytes) = limits.memory_bytes {
                    write(&dir, "memory.max", &bytes.to_string()).map_err(hint)?;
                    let _ = std::fs::write(dir.join("memory.swap.max"), "0");
                }
                if let Some(millis) = limits.cpu_millis {
                    let quota = (millis * CFS_PERIOD_US / 1000).max(1000);
                    write(&dir, "cpu.max", &format!("{quota} {CFS_PERIOD_US}")).map_err(hint)?;
                }
                if let Some(pids) = limits.pids {
                    write(&dir, "pids.max", &pids.to_string()).map_err(hint)?;
                }
                if dir.join("memory.events").exists() {
                    cg.oom_file = Some(dir.join("memory.events"));
                }
            }
        }
        Ok(cg)
    }

    /// Removes `<daemon cgroup>/<rel>` in every hierarchy (an empty sandbox or parent level).
    pub(crate) fn remove_level(&self, rel: &Path) {
        let bases: Vec<PathBuf> = match self {
            Cgroups::V1(dirs) => dirs.iter().map(|(_, b)| b.clone()).collect(),
            Cgroups::V2(base) => vec![base.clone()],
            Cgroups::None => Vec::new(),
        };
        for base in bases {
            let _ = remove_dir(&base.join(rel));
        }
    }
}

/// Removes a container's cgroups, killing whatever is left in them first (an exec'd process, a
/// daemonised child of a plain container).
pub(crate) fn remove(cg: &ContainerCgroup) -> io::Result<()> {
    let mut result = Ok(());
    for dir in &cg.dirs {
        if let Err(e) = remove_dir(dir) {
            result = Err(e);
        }
    }
    result
}

fn remove_dir(dir: &Path) -> io::Result<()> {
    for attempt in 0..50 {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt == 49 => return Err(e),
            Err(_) => {
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }
    Ok(())
}

/// The `oom_kill` counter of `memory.oom_control` (v1) or `memory.events` (v2).
pub(crate) fn oom_kills(file: &Path) -> u64 {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        .unwrap_or(0)
}

fn write(dir: &Path, file: &str, value: &str) -> io::Result<()> {
    std::fs::write(dir.join(file), value)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.join(file).display())))
}

fn join_rel(base: &Path, rel: &str) -> PathBuf {
    base.join(rel.trim_start_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_something_sane() {
        match Cgroups::detect() {
            Cgroups::V1(dirs) => assert!(dirs.iter().all(|(_, d)| d.starts_with("/sys/fs/cgroup"))),
            Cgroups::V2(d) => assert!(d.starts_with("/sys/fs/cgroup")),
            Cgroups::None => {}
        }
    }

    #[test]
    fn oom_counter() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("memory.oom_control");
        std::fs::write(&f, "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n").unwrap();
        assert_eq!(oom_kills(&f), 2);
        std::fs::write(&f, "low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n").unwrap();
        assert_eq!(oom_kills(&f), 0);
    }
}
