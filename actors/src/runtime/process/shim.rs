//! The container shim: `<binary> runtime-shim …`, a re-exec of the node daemon's binary (no
//! `fork`/`pre_exec`, since unsafe code is denied). Subcommands:
//!
//! - `run DIR`: the supervisor. Detaches (`setsid`), starts the container, answers `ok PID` or
//!   `error MESSAGE` on stdout, then stays as the container's parent: copies its stdout/stderr
//!   into the CRI log file and records how it ended in `exit.json`. It outlives the node
//!   daemon, which re-adopts containers from their directories.
//! - `init DIR`: the isolated container's PID 1 before `execve`: joins the cgroup and the
//!   sandbox's network namespace, unshares mount/UTS/IPC, mounts the overlay root, /proc, /dev,
//!   /sys, the generated /etc files and volumes, `pivot_root`s, sets the hostname and execs.
//! - `tty -- CMD…`: for `exec -t`: makes the terminal on stdin the controlling terminal of a
//!   new session, then execs CMD (which may be `exec DIR -- …`).
//! - `exec DIR -- CMD…` / `exec-child DIR -- CMD…`: a command inside a running isolated
//!   container (the first joins its PID namespace, which only applies to children; the second
//!   joins the rest and execs).
//!
//! Every mode runs single-threaded: `setns` into a mount namespace and creating threads after
//! `unshare(CLONE_NEWPID)` are refused to multi-threaded processes.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use super::log::{LogWriter, Stream};
use super::spec::{self, Exited, Isolation, ShimSpec, Started};

/// The subcommand the daemon's binary must route to [`shim_main`].
pub const SHIM_SUBCOMMAND: &str = "runtime-shim";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entry point of `<binary> runtime-shim ARGS…` (ARGS without the subcommand). Call it before
/// any thread is started (before building a tokio runtime).
pub fn shim_main(args: Vec<String>) -> ExitCode {
    let mut args = args.into_iter();
    let mode = args.next().unwrap_or_default();
    if mode == "tty" {
        return tty(args.skip_while(|a| a != "--").skip(1).collect());
    }
    let Some(dir) = args.next().map(PathBuf::from) else {
        eprintln!("usage: runtime-shim run|init|exec|exec-child DIR [-- CMD…]");
        return ExitCode::from(2);
    };
    let rest: Vec<String> = args.skip_while(|a| a != "--").skip(1).collect();
    match mode.as_str() {
        "run" => run(&dir),
        "init" => init(&dir),
        "exec" => exec_outer(&dir, rest),
        "exec-child" => exec_child(&dir, rest),
        other => {
            eprintln!("runtime-shim: unknown mode {other:?}");
            ExitCode::from(2)
        }
    }
}

/// `run`: start, report, supervise.
fn run(dir: &Path) -> ExitCode {
    // A daemon gone before reading the answer must not kill us with SIGPIPE. (Children start
    // with an empty signal mask: std resets it.)
    let mut pipe = nix::sys::signal::SigSet::empty();
    pipe.add(nix::sys::signal::Signal::SIGPIPE);
    let _ =
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&pipe), None);
    // Our own session: the daemon's terminal, process group and death do not reach us. Nor
    // do we keep its working directory (and the mount it is on) busy.
    let _ = nix::unistd::setsid();
    let _ = std::env::set_current_dir("/");
    let outcome = spec::read_json::<ShimSpec>(&dir.join(spec::SPEC))
        .ok_or_else(|| format!("cannot read {}", dir.join(spec::SPEC).display()))
        .and_then(|spec| {
            let log = LogWriter::open(&spec.log_path, spec.log_max_bytes, spec.log_max_files)
                .map_err(|e| format!("log file {}: {e}", spec.log_path.display()))?;
            let launched = launch(dir, &spec)?;
            Ok((spec, log, launched))
        });
    let mut stdout = std::io::stdout();
    match outcome {
        Err(msg) => {
            record_start_error(dir, &msg);
            let _ = writeln!(stdout, "error {}", msg.replace('\n', " "));
            ExitCode::FAILURE
        }
        Ok((spec, log, launched)) => {
            let _ = writeln!(stdout, "ok {}", launched.child.id());
            let _ = stdout.flush();
            // Nothing more goes to the daemon; drop its pipe so it never blocks us.
            if let Ok(null) = File::options().write(true).open("/dev/null") {
                let _ = nix::unistd::dup2_stdout(null.as_fd());
            }
            supervise(dir, &spec, log, launched);
            ExitCode::SUCCESS
        }
    }
}

pub(crate) struct Launched {
    pub child: Child,
    streams: Vec<(Stream, File)>,
}

/// Starts the container process and writes `started.json`, naming this process (a shim, or the
/// daemon supervising in a thread) as the supervisor.
pub(crate) fn launch(dir: &Path, spec: &ShimSpec) -> Result<Launched, String> {
    let mut child = match &spec.isolation {
        None => launch_plain(spec)?,
        Some(_) => launch_isolated(dir)?,
    };
    let pid = child.id();
    let me = std::process::id();
    let started = Started {
        shim_pid: me,
        shim_start: spec::proc_start(me).unwrap_or(0),
        pid,
        pid_start: spec::proc_start(pid).unwrap_or(0),
        started_at: SystemTime::now(),
    };
    if let Err(e) = spec::write_json(&dir.join(spec::STARTED), &started) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("writing {}: {e}", spec::STARTED));
    }
    let mut streams = Vec::new();
    if let Some(out) = child.stdout.take() {
        streams.push((Stream::Stdout, File::from(OwnedFd::from(out))));
    }
    if let Some(err) = child.stderr.take() {
        streams.push((Stream::Stderr, File::from(OwnedFd::from(err))));
    }
    Ok(Launched { child, streams })
}

fn launch_plain(spec: &ShimSpec) -> Result<Child, String> {
    let argv0 = spec.argv.first().ok_or("no command")?;
    let mut cmd = Command::new(argv0);
    cmd.args(&spec.argv[1..])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so stopping reaches what it started too.
        .process_group(0);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    cmd.spawn().map_err(|e| format!("starting {argv0:?}: {e}"))
}

/// Spawns `init` as PID 1 of a new PID namespace; its stdin is the write end of a pipe on which
/// it reports failures before `execve` (the pipe closes on a successful exec).
fn launch_isolated(dir: &Path) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the shim binary: {e}"))?;
    nix::sched::unshare(CloneFlags::CLONE_NEWPID)
        .map_err(|e| format!("unshare(CLONE_NEWPID): {e}"))?;
    let (reader, writer) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg(SHIM_SUBCOMMAND)
        .arg("init")
        .arg(dir)
        .env_clear()
        .stdin(Stdio::from(writer))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawned = cmd.spawn();
    // Our copy of the write end goes with the command, so EOF means "exec'd".
    drop(cmd);
    let mut child = spawned.map_err(|e| format!("starting the container init: {e}"))?;
    let mut message = String::new();
    let _ = File::from(reader).read_to_string(&mut message);
    if !message.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(message);
    }
    Ok(child)
}

/// Copies the container's output into the log until it exits (and its pipes close, or a second
/// passes for pipes held open by orphans), then writes `exit.json`.
pub(crate) fn supervise(dir: &Path, spec: &ShimSpec, mut log: LogWriter, launched: Launched) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let Launched {
        mut child,
        mut streams,
    } = launched;
    let mut status = None;
    let mut exited_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if status.is_none() {
            status = child.try_wait().ok().flatten();
            if status.is_some() {
                exited_at = Some(Instant::now());
            }
        }
        if streams.is_empty() {
            break;
        }
        if exited_at.is_some_and(|t| t.elapsed() > Duration::from_secs(1)) {
            break;
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = streams
                .iter()
                .map(|(_, f)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
                .collect();
            let timeout = if status.is_some() { 50u16 } else { 100u16 };
            match poll(&mut fds, PollTimeout::from(timeout)) {
                Ok(_) => fds
                    .iter()
                    .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                    .collect(),
                Err(nix::errno::Errno::EINTR) => vec![false; streams.len()],
                Err(_) => vec![true; streams.len()],
            }
        };
        let mut closed = Vec::new();
        for (i, is_ready) in ready.into_iter().enumerate() {
            if !is_ready {
                continue;
            }
            let (stream, file) = &mut streams[i];
            match file.read(&mut buf) {
                Ok(0) | Err(_) => closed.push(i),
                Ok(n) => {
                    let _ = log.write(*stream, &buf[..n]);
                }
            }
        }
        for i in closed.into_iter().rev() {
            streams.remove(i);
        }
    }
    let _ = log.finish();
    let status = match status {
        Some(s) => Some(s),
        None => child.wait().ok(),
    };
    let (exit_code, signal) = match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => (code, None),
            (None, Some(sig)) => (128 + sig, Some(sig)),
            _ => (255, None),
        },
        None => (255, None),
    };
    let oom_killed = spec
        .isolation
        .as_ref()
        .and_then(|i| i.oom_file.as_deref())
        .is_some_and(|f| super::cgroup::oom_kills(f) > 0);
    let exited = Exited {
        exit_code,
        signal,
        finished_at: SystemTime::now(),
        oom_killed,
        start_error: None,
        lost: false,
    };
    let _ = spec::write_json(&dir.join(spec::EXIT), &exited);
}

pub(crate) fn record_start_error(dir: &Path, msg: &str) {
    let exited = Exited {
        exit_code: 128,
        signal: None,
        finished_at: SystemTime::now(),
        oom_killed: false,
        start_error: Some(msg.to_owned()),
        lost: false,
    };
    let _ = spec::write_json(&dir.join(spec::EXIT), &exited);
}

/// `init`: on success never returns (the container's program replaces us).
fn init(dir: &Path) -> ExitCode {
    // Our stdin is the launcher's error pipe: reopen it (close-on-exec) to report failures.
    let mut errors = File::options().write(true).open("/proc/self/fd/0").ok();
    let msg = match init_inner(dir) {
        Ok(never) => match never {},
        Err(msg) => msg,
    };
    if let Some(f) = errors.as_mut() {
        let _ = f.write_all(msg.as_bytes());
    } else {
        eprintln!("{msg}");
    }
    ExitCode::from(127)
}

fn init_inner(dir: &Path) -> Result<std::convert::Infallible, String> {
    let spec = spec::read_json::<ShimSpec>(&dir.join(spec::SPEC)).ok_or("cannot read spec")?;
    let iso = spec.isolation.as_ref().ok_or("not an isolated container")?;
    for procs in &iso.cgroup_procs {
        // "0" is the writer itself, whatever PID namespace it is in.
        std::fs::write(procs, "0").map_err(|e| format!("joining {}: {e}", procs.display()))?;
    }
    if let Some(netns) = &iso.netns {
        let f = File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
        nix::sched::setns(f.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("setns(net): {e}"))?;
    }
    let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC;
    if iso.hostname.is_some() {
        flags |= CloneFlags::CLONE_NEWUTS;
    }
    nix::sched::unshare(flags).map_err(|e| format!("unshare: {e}"))?;
    // Nothing we mount may propagate back to the host.
    mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    setup_rootfs(iso)?;
    pivot(&iso.rootfs)?;
    if let Some(name) = &iso.hostname {
        nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {e}"))?;
    }
    let null = File::options()
        .read(true)
        .open("/dev/null")
        .map_err(|e| format!("/dev/null: {e}"))?;
    // Replaces the error pipe on fd 0 (our reopened copy closes at exec).
    nix::unistd::dup2_stdin(null.as_fd()).map_err(|e| format!("dup2: {e}"))?;
    drop(null);
    exec_in_container(&spec, iso.user.as_deref())
}

/// Chdir, switch user and execve, inside the container's root.
fn exec_in_container(
    spec: &ShimSpec,
    user: Option<&str>,
) -> Result<std::convert::Infallible, String> {
    let cwd = spec.cwd.as_deref().unwrap_or("/");
    if !Path::new(cwd).is_dir() {
        let _ = std::fs::create_dir_all(cwd);
    }
    nix::unistd::chdir(cwd).map_err(|e| format!("working directory {cwd:?}: {e}"))?;
    let env: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect::<Result<_, _>>()
        .map_err(|_| "NUL byte in the environment".to_string())?;
    let argv: Vec<CString> = spec
        .argv
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()
        .map_err(|_| "NUL byte in the command".to_string())?;
    let argv0 = spec.argv.first().ok_or("no command")?;
    let path_var = spec
        .env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or(DEFAULT_PATH);
    let exe = find_executable(argv0, path_var)
        .ok_or_else(|| format!("exec: {argv0:?}: executable file not found in $PATH"))?;
    if let Some(user) = user {
        switch_user(user)?;
    }
    let exe = CString::new(exe.into_os_string().into_encoded_bytes())
        .map_err(|_| "NUL byte in the command".to_string())?;
    nix::unistd::execve(&exe, &argv, &env).map_err(|e| format!("exec {argv0:?}: {e}"))
}

fn find_executable(name: &str, path_var: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| is_exec(p))
}

/// `uid[:gid]` or a user name from the (already pivoted) root's /etc/passwd.
fn switch_user(user: &str) -> Result<(), String> {
    use nix::unistd::{Gid, Uid};
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let entry = |field: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && (f[0] == field || f[2] == field))
                .then(|| (f[2].parse::<u32>().ok(), f[3].parse::<u32>().ok()))
        })
    };
    let (uid, passwd_gid) = match u.parse::<u32>() {
        Ok(uid) => (uid, entry(u).and_then(|e| e.1).unwrap_or(0)),
        Err(_) => match entry(u) {
            Some((Some(uid), gid)) => (uid, gid.unwrap_or(0)),
            _ => return Err(format!("unable to find user {u}")),
        },
    };
    let gid = if g.is_empty() {
        passwd_gid
    } else {
        match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => std::fs::read_to_string("/etc/group")
                .unwrap_or_default()
                .lines()
                .find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() > 2 && f[0] == g)
                        .then(|| f[2].parse().ok())
                        .flatten()
                })
                .ok_or_else(|| format!("unable to find group {g}"))?,
        }
    };
    nix::unistd::setgroups(&[Gid::from_raw(gid)]).map_err(|e| format!("setgroups: {e}"))?;
    nix::unistd::setgid(Gid::from_raw(gid)).map_err(|e| format!("setgid: {e}"))?;
    nix::unistd::setuid(Uid::from_raw(uid)).map_err(|e| format!("setuid: {e}"))
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    nix::mount::mount(source, target, fstype, flags, data).map_err(|e| {
        format!(
            "mount {} on {} ({}): {e}",
            source.unwrap_or("none"),
            target.display(),
            fstype.unwrap_or("bind")
        )
    })
}

fn setup_rootfs(iso: &Isolation) -> Result<(), String> {
    let root = &iso.rootfs;
    let lower: Vec<String> = iso
        .lower_dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        iso.upper_dir.display(),
        iso.work_dir.display()
    );
    mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(&data),
    )?;

    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let proc_dir = ensure_dir(root, "/proc")?;
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
    )?;
    let sys_dir = ensure_dir(root, "/sys")?;
    mount(
        Some("sysfs"),
        &sys_dir,
        Some("sysfs"),
        nosuid_nodev_noexec | MsFlags::MS_RDONLY,
        None,
    )?;
    let dev = ensure_dir(root, "/dev")?;
    mount(
        Some("tmpfs"),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    )?;
    for node in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(node);
        File::create(&target).map_err(|e| format!("{}: {e}", target.display()))?;
        let host = Path::new("/dev").join(node);
        mount(
            Some(&host.display().to_string()),
            &target,
            None,
            MsFlags::MS_BIND,
            None,
        )?;
    }
    for (link, to) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let _ = std::os::unix::fs::symlink(to, dev.join(link));
    }
    let pts = dev.join("pts");
    std::fs::create_dir_all(&pts).map_err(|e| format!("{}: {e}", pts.display()))?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620"),
    )?;
    let shm = dev.join("shm");
    std::fs::create_dir_all(&shm).map_err(|e| format!("{}: {e}", shm.display()))?;
    mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        nosuid_nodev_noexec,
        Some("mode=1777,size=65536k"),
    )?;
    let mqueue = dev.join("mqueue");
    if std::fs::create_dir_all(&mqueue).is_ok() {
        // Optional: kernels without POSIX message queues lack it.
        let _ = mount(
            Some("mqueue"),
            &mqueue,
            Some("mqueue"),
            nosuid_nodev_noexec,
            None,
        );
    }

    for (host, inside) in &iso.files {
        let target = ensure_file(root, inside)?;
        bind(host, &target, false)?;
    }
    for m in &iso.mounts {
        let inside = m.container_path.display().to_string();
        let target = if m.host_path.is_dir() {
            ensure_dir(root, &inside)?
        } else {
            ensure_file(root, &inside)?
        };
        bind(&m.host_path, &target, m.read_only)?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path, read_only: bool) -> Result<(), String> {
    let src = source.display().to_string();
    mount(
        Some(&src),
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    )?;
    if read_only {
        mount(
            None,
            target,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        )?;
    }
    Ok(())
}

/// `pivot_root(".", ".")` then detaching the old root (as runc does): no directory for the old
/// root is needed and nothing of the host stays reachable.
fn pivot(root: &Path) -> Result<(), String> {
    nix::unistd::chdir(root).map_err(|e| format!("chdir {}: {e}", root.display()))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| format!("pivot_root: {e}"))?;
    nix::mount::umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("umount old root: {e}"))?;
    nix::unistd::chdir("/").map_err(|e| format!("chdir /: {e}"))
}

fn ensure_dir(root: &Path, inside: &str) -> Result<PathBuf, String> {
    let p = secure_join(root, Path::new(inside))?;
    std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

fn ensure_file(root: &Path, inside: &str) -> Result<PathBuf, String> {
    let p = secure_join(root, Path::new(inside))?;
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    if !p.exists() {
        File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    Ok(p)
}

/// `root` + `path` with symlinks resolved as if `root` were `/`, so an image's symlink cannot
/// point a mount at a host path.
pub(crate) fn secure_join(root: &Path, path: &Path) -> Result<PathBuf, String> {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: std::collections::VecDeque<std::ffi::OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(format!("{}: too many symlinks", path.display()));
                }
                let target = std::fs::read_link(&candidate)
                    .map_err(|e| format!("{}: {e}", candidate.display()))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push_front(n.to_owned()),
                        Component::ParentDir => pending.push_front("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(part),
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

/// `tty -- CMD…`: a new session whose controlling terminal is our stdin, then CMD.
fn tty(cmd: Vec<String>) -> ExitCode {
    let Some((program, args)) = cmd.split_first() else {
        eprintln!("usage: runtime-shim tty -- CMD…");
        return ExitCode::from(2);
    };
    let controlling = nix::unistd::setsid()
        .map_err(std::io::Error::from)
        .and_then(|_| rustix::process::ioctl_tiocsctty(std::io::stdin()).map_err(Into::into));
    if let Err(e) = controlling {
        eprintln!("setting up the terminal: {e}");
        return ExitCode::from(126);
    }
    let e = Command::new(program).args(args).exec();
    eprintln!("exec {program}: {e}");
    ExitCode::from(if e.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}

/// `exec`: joins the container's PID namespace (for children only) and runs `exec-child`.
fn exec_outer(dir: &Path, cmd: Vec<String>) -> ExitCode {
    let Some(started) = spec::read_json::<Started>(&dir.join(spec::STARTED)) else {
        eprintln!("container not started");
        return ExitCode::from(126);
    };
    if !spec::alive(started.pid, started.pid_start) {
        eprintln!("container not running");
        return ExitCode::from(126);
    }
    let joined = File::open(format!("/proc/{}/ns/pid", started.pid))
        .map_err(|e| e.to_string())
        .and_then(|f| {
            nix::sched::setns(f.as_fd(), CloneFlags::CLONE_NEWPID).map_err(|e| e.to_string())
        });
    if let Err(e) = joined {
        eprintln!("joining the container's PID namespace: {e}");
        return ExitCode::from(126);
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("locating the shim binary: {e}");
            return ExitCode::from(126);
        }
    };
    // Termination signals kill the command: it then dies as our child, instead of being
    // orphaned to the host's init (which would hold up its namespace's teardown until reaped).
    use nix::sys::signal::{SigSet, Signal};
    let mut mask = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        mask.add(sig);
    }
    let signals = mask
        .thread_block()
        .and_then(|()| nix::sys::signalfd::SignalFd::new(&mask));
    let mut child = match Command::new(exe)
        .arg(SHIM_SUBCOMMAND)
        .arg("exec-child")
        .arg(dir)
        .arg("--")
        .args(&cmd)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("exec: {e}");
            return ExitCode::from(126);
        }
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        match &signals {
            Ok(fd) => match fd.read_signal() {
                Ok(Some(info)) if info.ssi_signo != Signal::SIGCHLD as u32 => {
                    let _ = child.kill();
                }
                _ => {}
            },
            Err(_) => break child.wait(),
        }
    };
    match status {
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ExitCode::from(code as u8),
            (None, Some(sig)) => ExitCode::from((128 + sig) as u8),
            _ => ExitCode::from(255),
        },
        Err(e) => {
            eprintln!("exec: {e}");
            ExitCode::from(126)
        }
    }
}

/// `exec-child`: joins the container's cgroup and namespaces and execs the command.
fn exec_child(dir: &Path, cmd: Vec<String>) -> ExitCode {
    let msg = match exec_child_inner(dir, cmd) {
        Ok(never) => match never {},
        Err(msg) => msg,
    };
    eprintln!("{msg}");
    if msg.contains("not found") {
        ExitCode::from(127)
    } else {
        ExitCode::from(126)
    }
}

fn exec_child_inner(dir: &Path, cmd: Vec<String>) -> Result<std::convert::Infallible, String> {
    // Our parent (`exec`) is what the daemon kills on a timeout.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(|e| format!("prctl: {e}"))?;
    let mut spec = spec::read_json::<ShimSpec>(&dir.join(spec::SPEC)).ok_or("cannot read spec")?;
    let started =
        spec::read_json::<Started>(&dir.join(spec::STARTED)).ok_or("container not started")?;
    let iso = spec.isolation.clone().ok_or("not an isolated container")?;
    let mut namespaces = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{}/ns/{name}", started.pid);
        let f = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        namespaces.push((f, flag, name));
    }
    if !spec::alive(started.pid, started.pid_start) {
        return Err("container not running".into());
    }
    for procs in &iso.cgroup_procs {
        let _ = std::fs::write(procs, "0");
    }
    for (f, flag, name) in &namespaces {
        nix::sched::setns(f.as_fd(), *flag).map_err(|e| format!("setns({name}): {e}"))?;
    }
    spec.argv = cmd;
    exec_in_container(&spec, iso.user.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_stays_inside() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/etc")).unwrap();
        std::os::unix::fs::symlink("/real/etc", root.join("etc")).unwrap();
        std::os::unix::fs::symlink("../../../../..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/etc/hosts")).unwrap(),
            root.join("real/etc/hosts")
        );
        assert_eq!(
            secure_join(root, Path::new("/up/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("/abs/y")).unwrap(),
            root.join("y")
        );
        assert_eq!(
            secure_join(root, Path::new("../../z")).unwrap(),
            root.join("z")
        );
    }

    #[test]
    fn executables_on_path() {
        assert!(find_executable("sh", DEFAULT_PATH).is_some());
        assert!(find_executable("no-such-program-here", DEFAULT_PATH).is_none());
        assert_eq!(
            find_executable("/bin/sh", "").as_deref(),
            Some(Path::new("/bin/sh"))
        );
    }
}
