//! `flotilla up` end to end: the binary as a user runs it.
//!
//! Proves that:
//! - `flotilla up --nodes 3` writes a kubeconfig, and `flotilla cluster status -o json
//!   --kubeconfig D/kubeconfig` then reports a leader and 3 voters;
//! - the cluster accepts writes from a client whose certificate comes from the CA that `up`
//!   left in the data directory;
//! - SIGINT to `up` makes it exit 0 after stopping every node: each node process is gone
//!   and its pid file removed;
//! - `up` again on the same data directory brings the same cluster back (same node names and
//!   ports, same CA), with the data written before.

use std::path::Path;
use std::process::Stdio;

use flotilla_chaos::{ClusterLayout, find_binary, free_base_port};
use flotilla_consensus::{Read, StoreClient};
use flotilla_mesh::{ClusterCa, RpcEndpoint};
use flotilla_tests::{CONVERGE, eventually, run_cli, tail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

fn spawn_up(dir: &Path, base_port: u16, log_name: &str) -> Child {
    let log = std::fs::File::create(dir.with_extension(log_name)).unwrap();
    Command::new(find_binary().unwrap())
        .args([
            "up",
            "--nodes",
            "3",
            "--data-dir",
            &dir.display().to_string(),
            "--base-port",
            &base_port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Waits until `cluster status -o json` shows a leader and 3 voters; returns the status JSON.
async fn wait_for_cluster(dir: &Path) -> serde_json::Value {
    let kubeconfig = dir.join("kubeconfig");
    eventually(
        CONVERGE,
        "cluster status to show a leader and 3 voters",
        || async {
            anyhow::ensure!(kubeconfig.exists(), "no kubeconfig yet");
            let (ok, stdout, stderr) = run_cli(&[
                "cluster",
                "status",
                "-o",
                "json",
                "--kubeconfig",
                &kubeconfig.display().to_string(),
            ])
            .await?;
            anyhow::ensure!(ok, "cluster status failed: {stderr}");
            let status: serde_json::Value = serde_json::from_str(&stdout)?;
            let raft = &status["raft"];
            anyhow::ensure!(raft["leader"].is_string(), "no leader: {raft}");
            let voters = raft["members"]
                .as_array()
                .map(|m| m.iter().filter(|m| m["role"] == "voter").count())
                .unwrap_or(0);
            anyhow::ensure!(voters == 3, "{voters} voters: {raft}");
            Ok(status)
        },
    )
    .await
    .unwrap()
}

/// SIGINT to `up` once it says the cluster is up (before that, an interrupt is a failure to
/// form, exit 1); it must exit 0, and every node must be gone with its pid file.
async fn interrupt(up: &mut Child, dir: &Path, layout: &ClusterLayout, log: &Path) {
    eventually(CONVERGE, "`up` to say the cluster is up", || async {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        anyhow::ensure!(text.contains("Press Ctrl-C"), "not yet: {text}");
        Ok(())
    })
    .await
    .unwrap();
    let pids: Vec<(String, i32)> = layout
        .nodes
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(dir.join(&n.name).join("node.pid")).unwrap();
            (n.name.clone(), text.trim().parse().unwrap())
        })
        .collect();
    kill(Pid::from_raw(up.id().unwrap() as i32), Signal::SIGINT).unwrap();
    let status = tokio::time::timeout(CONVERGE, up.wait())
        .await
        .expect("`up` did not exit after SIGINT")
        .unwrap();
    assert!(status.success(), "`up` exited with {status}");
    for (name, pid) in pids {
        assert!(
            !dir.join(&name).join("node.pid").exists(),
            "{name}: pid file left behind"
        );
        // `up` reaped its children, so a signal-0 probe finds no such process.
        assert!(
            kill(Pid::from_raw(pid), None).is_err(),
            "{name} (pid {pid}) still running"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_starts_stops_on_sigint_and_restarts_with_the_same_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cluster");
    let base_port = free_base_port(3).unwrap();

    let mut up = spawn_up(&dir, base_port, "up1.log");
    let status = wait_for_cluster(&dir).await;
    let first_leader = status["raft"]["leader"].as_str().unwrap().to_owned();
    let layout: ClusterLayout =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    assert_eq!(layout.nodes.len(), 3);
    assert_eq!(layout.nodes[0].api_port, base_port);

    // A client certificate from the CA `up` created.
    let ca = ClusterCa::load_files(&dir).unwrap();
    let rpc = RpcEndpoint::client(&ca.issue("test").unwrap())
        .await
        .unwrap();
    let client = |i: usize| StoreClient::new(rpc.clone(), layout.rpc_addr(i).unwrap());
    let written = client(1).put("up/key", "survives restarts").await.unwrap();

    interrupt(&mut up, &dir, &layout, &dir.with_extension("up1.log")).await;
    eprintln!("first run:\n{}", tail(&dir.with_extension("up1.log"), 20));

    // Again, on the same directory (the base port flag is ignored: cluster.json is reused).
    let other_port = free_base_port(3).unwrap();
    let mut up = spawn_up(&dir, other_port, "up2.log");
    let status = wait_for_cluster(&dir).await;
    eprintln!(
        "leader before {first_leader}, after restart {}",
        status["raft"]["leader"]
    );
    let layout_again: ClusterLayout =
        serde_json::from_slice(&std::fs::read(dir.join("cluster.json")).unwrap()).unwrap();
    assert_eq!(
        serde_json::to_value(&layout_again).unwrap(),
        serde_json::to_value(&layout).unwrap(),
        "the layout changed"
    );
    for i in 0..3 {
        let got = eventually(
            CONVERGE,
            "a linearizable read after the restart",
            || async { Ok(client(i).get("up/key", Read::Linearizable).await?) },
        )
        .await
        .unwrap();
        let kv = got.kv.expect("data written before the restart is gone");
        assert_eq!(kv.value, b"survives restarts");
        assert_eq!(kv.mod_revision, written.revision);
    }
    let resp = client(2).put("up/key2", "second run").await.unwrap();
    assert!(resp.revision > written.revision);

    interrupt(&mut up, &dir, &layout, &dir.with_extension("up2.log")).await;
}
