//! Real kubectl for tests: installed with the repository's fetch script on first use (into
//! `.tools/bin`), or taken from `$KUBECTL`; one context per node.

use std::path::{Path, PathBuf};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// kubectl, installed with the repository's fetch script if it is not there yet.
pub fn kubectl_binary() -> PathBuf {
    if let Ok(k) = std::env::var("KUBECTL") {
        return PathBuf::from(k);
    }
    // One install at a time: the tests of one binary run in parallel threads.
    static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dest = workspace_root().join(".tools/bin");
    let kubectl = dest.join("kubectl");
    if !kubectl.is_file() {
        let script = workspace_root().join("../shared/tools/fetch-kubectl.sh");
        let status = std::process::Command::new("bash")
            .arg(&script)
            .arg(&dest)
            .status()
            .expect("running fetch-kubectl.sh");
        // Its last line (`kubectl version | head -1` under pipefail) may die of SIGPIPE after
        // a good install: what counts is that kubectl and helm are there.
        assert!(
            status.success() || (kubectl.is_file() && dest.join("helm").is_file()),
            "{} failed",
            script.display()
        );
    }
    kubectl
}

pub struct Kubectl {
    pub binary: PathBuf,
    pub kubeconfig: PathBuf,
}

impl Kubectl {
    /// Runs kubectl against node `node` (its context); returns (success, stdout, stderr).
    pub async fn run(
        &self,
        node: usize,
        args: &[&str],
        stdin: Option<&str>,
    ) -> (bool, String, String) {
        let context = if node == 0 {
            "flotilla".to_owned()
        } else {
            format!("flotilla-node-{}", node + 1)
        };
        let mut cmd = tokio::process::Command::new(&self.binary);
        cmd.arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--context")
            .arg(&context)
            .args(args)
            .env("HOME", self.kubeconfig.parent().unwrap())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("starting kubectl");
        if let Some(input) = stdin {
            use tokio::io::AsyncWriteExt;
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).await.unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().await.expect("waiting for kubectl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub async fn ok(&self, node: usize, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.run(node, args, stdin).await;
        assert!(ok, "kubectl {args:?} on node {node} failed:\n{out}\n{err}");
        out
    }

    /// Starts `kubectl ARGS` (a `-w` watch, say) against the first node, its stdout piped;
    /// killed when the child is dropped.
    pub fn spawn(&self, args: &[&str]) -> tokio::process::Child {
        tokio::process::Command::new(&self.binary)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .env("HOME", self.kubeconfig.parent().unwrap())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting kubectl")
    }

    pub async fn fails(&self, node: usize, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.run(node, args, stdin).await;
        assert!(
            !ok,
            "kubectl {args:?} on node {node} should have failed:\n{out}"
        );
        err
    }
}

/// A cluster of `nodes` nodes (`process` runtime unless `extra_args` say otherwise) with the
/// busybox image from `scripts/build-busybox-image.sh` imported on every node, the default
/// namespace ready, and kubectl pointed at it. `None`, after saying why, when this machine
/// cannot build the image.
pub async fn busybox_cluster(
    label: &str,
    nodes: usize,
    extra_args: &[&str],
) -> Option<(crate::TestCluster, Kubectl)> {
    busybox_cluster_first(label, nodes, nodes, extra_args).await
}

/// [`busybox_cluster`] with a layout of `nodes` nodes of which only the first `started` run;
/// the image is imported on all of them, so the others can join later, ready to run pods.
pub async fn busybox_cluster_first(
    label: &str,
    nodes: usize,
    started: usize,
    extra_args: &[&str],
) -> Option<(crate::TestCluster, Kubectl)> {
    let image = tempfile::tempdir().ok()?;
    let tar = image.path().join("busybox.tar");
    let built = tokio::process::Command::new("bash")
        .arg(workspace_root().join("scripts/build-busybox-image.sh"))
        .arg(&tar)
        .output()
        .await
        .expect("running bash");
    if !built.status.success() {
        eprintln!(
            "skipped: no busybox image could be built here: {}",
            String::from_utf8_lossy(&built.stderr)
        );
        return None;
    }
    let binary = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let cluster = crate::TestCluster::start_first(label, nodes, started, nodes.min(3), extra_args)
        .await
        .unwrap();
    let (ok, out, err) = crate::run_cli(&[
        "image",
        "import",
        tar.to_str().unwrap(),
        "--all-nodes",
        cluster.data_dir().to_str().unwrap(),
    ])
    .await
    .unwrap();
    assert!(ok, "{out}{err}");
    let k = Kubectl {
        binary,
        kubeconfig: cluster.kubeconfig_path(),
    };
    crate::eventually(crate::CONVERGE, "the default namespace", || async {
        let (ok, out, err) = k.run(0, &["get", "ns", "default"], None).await;
        anyhow::ensure!(ok && out.contains("Active"), "{out}{err}");
        Ok(())
    })
    .await
    .unwrap();
    Some((cluster, k))
}
