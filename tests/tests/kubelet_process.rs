//! Pods as real processes (the `process` runtime; isolated when the tests run as root): two
//! containers sharing an emptyDir and talking over localhost, init containers first, env and
//! files from a ConfigMap, readiness (httpGet) and liveness (exec) probes, restart policies and
//! exit codes, `kubectl logs` (also `-f`) through
//! another node, and a node daemon SIGKILLed and restarted while its pod keeps running.
//!
//! The busybox image comes from `scripts/build-busybox-image.sh` (Debian's busybox-static);
//! without it the test says so and stops.

use std::time::Duration;

use flotilla_tests::kubectl::busybox_cluster;
use flotilla_tests::{CONVERGE, eventually, run_cli};

const WEB: &str = "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  nodeName: node-2
  initContainers:
  - name: prepare
    image: busybox:1.36
    command: [sh, -c, 'echo prepared-by-init > /shared/index.html']
    volumeMounts: [{name: shared, mountPath: /shared}]
  containers:
  - name: server
    image: busybox:1.36
    command: [httpd, -f, -p, '8080', -h, /shared]
    volumeMounts: [{name: shared, mountPath: /shared}]
    readinessProbe:
      httpGet: {path: /index.html, port: 8080}
      periodSeconds: 1
    resources:
      requests: {cpu: 50m, memory: 16Mi}
      limits: {cpu: 200m, memory: 64Mi}
  - name: client
    image: busybox:1.36
    command: [sh, -c, 'while true; do wget -qO- http://127.0.0.1:8080/index.html; echo level=$LEVEL file=$(cat /config/level); sleep 1; done']
    env:
    - name: LEVEL
      valueFrom:
        configMapKeyRef: {name: settings, key: level}
    volumeMounts:
    - {name: config, mountPath: /config}
  volumes:
  - {name: shared, emptyDir: {}}
  - name: config
    configMap: {name: settings}
";

/// Deletes the node bridges a test's cluster made, when the test ends.
struct RemoveBridges(Vec<String>);

impl Drop for RemoveBridges {
    fn drop(&mut self) {
        for b in &self.0 {
            if std::path::Path::new("/sys/class/net").join(b).exists() {
                let _ = std::process::Command::new("ip")
                    .args(["link", "delete", b])
                    .status();
            }
        }
    }
}

/// A plain HTTP GET; the response as text (empty if it failed).
async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default()
}

const FAILS: &str = "apiVersion: v1
kind: Pod
metadata: {name: fails}
spec:
  nodeName: node-3
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, 'echo about to fail; exit 3']
";

const FLAKY: &str = "apiVersion: v1
kind: Pod
metadata: {name: flaky}
spec:
  nodeName: node-3
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, 'touch /tmp/ok; sleep 2; rm /tmp/ok; sleep 3600']
    livenessProbe:
      exec: {command: [test, -f, /tmp/ok]}
      periodSeconds: 1
      failureThreshold: 2
";

const DONE: &str = "apiVersion: v1
kind: Pod
metadata: {name: done}
spec:
  nodeName: node-1
  restartPolicy: OnFailure
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, 'echo finished']
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_run_as_processes_share_volumes_and_localhost_and_survive_a_node_restart() {
    // A pod network of its own (not 10.244/16, which `flotilla up` uses by default).
    let Some((mut cluster, k)) =
        busybox_cluster("kubelet-process", 3, &["--cluster-cidr=10.245.0.0/16"]).await
    else {
        return;
    };
    let _bridges = RemoveBridges((0..3).map(|i| format!("fl0af5{i:02x}00")).collect());

    k.ok(
        0,
        &["create", "configmap", "settings", "--from-literal=level=7"],
        None,
    )
    .await;
    k.ok(1, &["apply", "-f", "-"], Some(WEB)).await;
    eventually(CONVERGE, "web Running 2/2", || async {
        let (_, out, _) = k.run(2, &["get", "pod", "web"], None).await;
        anyhow::ensure!(out.contains("2/2") && out.contains("Running"), "{out}");
        Ok(())
    })
    .await
    .unwrap();
    // The client reaches the server over localhost, reads what the init container wrote to
    // the shared volume, and sees the ConfigMap as env and as a file; logs through node 1.
    eventually(CONVERGE, "the client's log", || async {
        let (ok, out, err) = k
            .run(0, &["logs", "web", "-c", "client", "--tail=4"], None)
            .await;
        anyhow::ensure!(ok, "{err}");
        anyhow::ensure!(
            out.contains("prepared-by-init") && out.contains("level=7 file=7"),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();
    // describe shows the containers' state and the kubelet's events.
    let described = k.ok(2, &["describe", "pod", "web"], None).await;
    assert!(
        described.contains("Started container server")
            && described.contains("Started container client")
            && described.contains("State:          Running"),
        "{described}"
    );
    // `logs -f` streams new lines as they come.
    let (_, followed, _) = tokio::time::timeout(Duration::from_secs(20), async {
        let mut cmd = tokio::process::Command::new(&k.binary);
        cmd.args(["--kubeconfig"])
            .arg(&k.kubeconfig)
            .args(["logs", "-f", "web", "-c", "client", "--tail=0"])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        let _ = child.start_kill();
        let out = child.wait_with_output().await.unwrap();
        (true, String::from_utf8_lossy(&out.stdout).into_owned(), ())
    })
    .await
    .unwrap();
    assert!(
        followed.matches("prepared-by-init").count() >= 2,
        "{followed}"
    );

    // Each node was given its own subnet; web's IP is in node-2's, reachable from the host
    // when its containers are isolated (root).
    let cidrs = k
        .ok(
            0,
            &["get", "nodes", "-o", "jsonpath={.items[*].spec.podCIDR}"],
            None,
        )
        .await;
    let mut cidrs: Vec<&str> = cidrs.split_whitespace().collect();
    cidrs.sort();
    if nix::unistd::geteuid().is_root() {
        assert_eq!(cidrs, ["10.245.0.0/24", "10.245.1.0/24", "10.245.2.0/24"]);
        let node2 = k
            .ok(
                0,
                &["get", "node", "node-2", "-o", "jsonpath={.spec.podCIDR}"],
                None,
            )
            .await;
        let ip = k
            .ok(
                1,
                &["get", "pod", "web", "-o", "jsonpath={.status.podIP}"],
                None,
            )
            .await;
        let prefix = node2.trim_end_matches("0/24");
        assert!(ip.starts_with(prefix), "pod IP {ip} outside {node2}");
        let page = http_get(&format!("{ip}:8080"), "/index.html").await;
        assert!(page.contains("prepared-by-init"), "{page}");
    }

    // The server's readiness probe (httpGet on the pod's own localhost) made it Ready; a
    // failing liveness probe restarts a container.
    let ready = k
        .ok(
            1,
            &[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.status.containerStatuses[?(@.name==\"server\")].ready}",
            ],
            None,
        )
        .await;
    assert_eq!(ready, "true");
    k.ok(0, &["apply", "-f", "-"], Some(FLAKY)).await;
    eventually(
        CONVERGE,
        "flaky restarted by its liveness probe",
        || async {
            let (_, out, _) = k
                .run(
                    2,
                    &[
                        "get",
                        "pod",
                        "flaky",
                        "-o",
                        "jsonpath={.status.containerStatuses[0].restartCount}",
                    ],
                    None,
                )
                .await;
            anyhow::ensure!(out.parse::<u32>().is_ok_and(|n| n >= 1), "{out}");
            Ok(())
        },
    )
    .await
    .unwrap();

    // Restart policies and exit codes.
    k.ok(2, &["apply", "-f", "-"], Some(FAILS)).await;
    k.ok(0, &["apply", "-f", "-"], Some(DONE)).await;
    eventually(CONVERGE, "fails Failed with exit code 3", || async {
        let (_, out, _) = k
            .run(
                1,
                &["get", "pod", "fails", "-o", "jsonpath={.status.phase} {.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].state.terminated.reason}"],
                None,
            )
            .await;
        anyhow::ensure!(out == "Failed 3 Error", "{out}");
        Ok(())
    })
    .await
    .unwrap();
    eventually(CONVERGE, "done Succeeded", || async {
        let (_, out, _) = k
            .run(
                2,
                &["get", "pod", "done", "-o", "jsonpath={.status.phase} {.status.containerStatuses[0].state.terminated.reason}"],
                None,
            )
            .await;
        anyhow::ensure!(out == "Succeeded Completed", "{out}");
        Ok(())
    })
    .await
    .unwrap();
    let log = k.ok(1, &["logs", "fails"], None).await;
    assert_eq!(log, "about to fail\n");

    // exec through a node other than the pod's: output, stderr, the exit code, stdin.
    let (ok, out, err) = k
        .run(
            0,
            &[
                "exec",
                "web",
                "-c",
                "server",
                "--",
                "sh",
                "-c",
                "cat /shared/index.html; echo oops >&2; exit 7",
            ],
            None,
        )
        .await;
    assert!(!ok, "a failing command fails kubectl: {out}{err}");
    assert_eq!(out, "prepared-by-init\n");
    assert!(
        err.contains("oops") && err.contains("command terminated with exit code 7"),
        "{err}"
    );
    let (ok, out, err) = k
        .run(
            2,
            &[
                "exec",
                "-i",
                "web",
                "-c",
                "client",
                "--",
                "sh",
                "-c",
                "cat > /tmp/in; wc -c < /tmp/in; cat /tmp/in",
            ],
            Some("twelve bytes"),
        )
        .await;
    assert!(ok, "{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        ["12", "twelve", "bytes"]
    );
    // The `flotilla` client does the same, with kubectl's exit code.
    let kubeconfig = cluster.kubeconfig_path();
    let (ok, out, err) = run_cli(&[
        "exec",
        "web",
        "-c",
        "server",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "hostname; exit 5",
    ])
    .await
    .unwrap();
    assert!(
        !ok && out == "web\n" && err.contains("exit code 5"),
        "{out}{err}"
    );

    // Readiness follows the probe both ways: the page moved away makes web not Ready, and
    // back, Ready again.
    for (from, to, want) in [
        ("index.html", "away.html", "False"),
        ("away.html", "index.html", "True"),
    ] {
        k.ok(
            1,
            &[
                "exec",
                "web",
                "-c",
                "server",
                "--",
                "mv",
                &format!("/shared/{from}"),
                &format!("/shared/{to}"),
            ],
            None,
        )
        .await;
        eventually(CONVERGE, &format!("web Ready={want}"), || async {
            let (_, out, _) = k
                .run(
                    2,
                    &[
                        "get",
                        "pod",
                        "web",
                        "-o",
                        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                    ],
                    None,
                )
                .await;
            anyhow::ensure!(out == want, "{out}");
            Ok(())
        })
        .await
        .unwrap();
    }

    // SIGKILL node-2's daemon: its pod keeps running; restarted, the node reports it again
    // without restarting its containers.
    let started_before = k
        .ok(
            0,
            &[
                "get",
                "pod",
                "web",
                "-o",
                "jsonpath={.status.containerStatuses[*].state.running.startedAt}",
            ],
            None,
        )
        .await;
    cluster.kill(1).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_node(1).unwrap();
    eventually(
        CONVERGE,
        "web still running after the node restart",
        || async {
            let (ok, out, err) = k
                .run(1, &["logs", "web", "-c", "client", "--tail=4"], None)
                .await;
            anyhow::ensure!(ok && out.contains("prepared-by-init"), "{out}{err}");
            Ok(())
        },
    )
    .await
    .unwrap();
    let after = k
        .ok(
            2,
            &["get", "pod", "web", "-o", "jsonpath={.status.containerStatuses[*].state.running.startedAt} {.status.containerStatuses[*].restartCount}"],
            None,
        )
        .await;
    assert_eq!(after, format!("{started_before} 0 0"));

    for pod in ["web", "fails", "done", "flaky"] {
        k.ok(0, &["delete", "pod", pod, "--grace-period=1"], None)
            .await;
    }
    let left = k.ok(1, &["get", "pods", "-o", "name"], None).await;
    assert!(left.trim().is_empty(), "{left}");
}

const HOG: &str = "apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  nodeName: node-1
  restartPolicy: Never
  containers:
  - name: main
    image: busybox:1.36
    # dd's 256 MiB block buffer is filled, far over the 32 MiB limit.
    command: [dd, if=/dev/zero, of=/dev/null, bs=256M, count=4]
    resources:
      limits: {memory: 32Mi}
";

/// A pod reading a Secret as env and file, whose SIGTERM handler leaves a note in `out_dir`.
fn secretive(out_dir: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: secretive}}
spec:
  nodeName: node-2
  terminationGracePeriodSeconds: 20
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, 'trap \"echo got-TERM > /out/term; exit 0\" TERM; echo token=$TOKEN file=$(cat /secret/token); while true; do sleep 1; done']
    env:
    - name: TOKEN
      valueFrom:
        secretKeyRef: {{name: creds, key: token}}
    volumeMounts:
    - {{name: creds, mountPath: /secret}}
    - {{name: out, mountPath: /out}}
  volumes:
  - name: creds
    secret: {{secretName: creds}}
  - name: out
    hostPath: {{path: {out_dir}}}
"
    )
}

fn marker_pod(name: &str, node: &str, marker: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, 'while true; do sleep 1; done # {marker}']
"
    )
}

/// Processes on this machine whose command line contains `needle`.
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    std::fs::read(e.path().join("cmdline"))
                        .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_secrets_graceful_stop_and_pods_deleted_while_their_node_was_down() {
    let Some((mut cluster, k)) = busybox_cluster("kubelet-process-2", 3, &[]).await else {
        return;
    };

    // Memory limits are enforced only with isolation (root, cgroups).
    let isolated = nix::unistd::geteuid().is_root();
    if isolated {
        k.ok(0, &["apply", "-f", "-"], Some(HOG)).await;
    }
    k.ok(
        1,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=token=s3cr3t",
        ],
        None,
    )
    .await;
    let out_dir = tempfile::tempdir().unwrap();
    k.ok(
        1,
        &["apply", "-f", "-"],
        Some(&secretive(out_dir.path().to_str().unwrap())),
    )
    .await;
    // Pods on node-3, which is about to go down.
    let pending_marker = format!("pending-{}", std::process::id());
    let forced_marker = format!("forced-{}", std::process::id());
    k.ok(
        2,
        &["apply", "-f", "-"],
        Some(&marker_pod("pending", "node-3", &pending_marker)),
    )
    .await;
    k.ok(
        2,
        &["apply", "-f", "-"],
        Some(&marker_pod("forced", "node-3", &forced_marker)),
    )
    .await;

    if isolated {
        eventually(CONVERGE, "hog OOMKilled", || async {
            let (_, out, _) = k
                .run(
                    1,
                    &["get", "pod", "hog", "-o", "jsonpath={.status.phase} {.status.containerStatuses[0].state.terminated.reason} {.status.containerStatuses[0].state.terminated.exitCode}"],
                    None,
                )
                .await;
            anyhow::ensure!(out == "Failed OOMKilled 137", "{out}");
            Ok(())
        })
        .await
        .unwrap();
        let described = k.ok(2, &["describe", "pod", "hog"], None).await;
        assert!(described.contains("OOMKilled"), "{described}");
    }
    eventually(CONVERGE, "the secret as env and as a file", || async {
        let (_, out, _) = k.run(0, &["logs", "secretive"], None).await;
        anyhow::ensure!(out.contains("token=s3cr3t file=s3cr3t"), "{out}");
        Ok(())
    })
    .await
    .unwrap();
    eventually(CONVERGE, "the marker pods running", || async {
        anyhow::ensure!(
            processes_with(&pending_marker) >= 1 && processes_with(&forced_marker) >= 1,
            "not running yet"
        );
        Ok(())
    })
    .await
    .unwrap();

    // Graceful deletion: the container is told with SIGTERM and may finish its work.
    k.ok(0, &["delete", "pod", "secretive", "--wait=false"], None)
        .await;
    eventually(
        CONVERGE,
        "the TERM handler ran and the pod is gone",
        || async {
            let (ok, out, err) = k.run(1, &["get", "pod", "secretive"], None).await;
            anyhow::ensure!(!ok && err.contains("NotFound"), "still there: {out}");
            Ok(())
        },
    )
    .await
    .unwrap();
    let note = std::fs::read_to_string(out_dir.path().join("term")).unwrap_or_default();
    assert_eq!(note, "got-TERM\n");

    // node-3's daemon dies; one of its pods is deleted gracefully (it waits for the node),
    // the other is force-deleted (gone from the API at once). The node comes back, stops
    // both, and the graceful one's object is then removed.
    cluster.kill(2).await.unwrap();
    k.ok(0, &["delete", "pod", "pending", "--wait=false"], None)
        .await;
    k.ok(
        0,
        &["delete", "pod", "forced", "--force", "--grace-period=0"],
        None,
    )
    .await;
    let (_, out, _) = k
        .run(
            1,
            &[
                "get",
                "pod",
                "pending",
                "-o",
                "jsonpath={.metadata.deletionTimestamp}",
            ],
            None,
        )
        .await;
    assert!(
        !out.is_empty(),
        "pending is Terminating while its node is down"
    );
    assert!(
        processes_with(&pending_marker) >= 1 && processes_with(&forced_marker) >= 1,
        "containers outlive their node daemon"
    );
    cluster.start_node(2).unwrap();
    eventually(CONVERGE, "node-3 cleaned up after itself", || async {
        let (ok, _, err) = k.run(1, &["get", "pod", "pending"], None).await;
        anyhow::ensure!(!ok && err.contains("NotFound"), "pending still listed");
        anyhow::ensure!(
            processes_with(&pending_marker) == 0 && processes_with(&forced_marker) == 0,
            "containers of deleted pods still run"
        );
        Ok(())
    })
    .await
    .unwrap();
    for pod in ["hog"] {
        let _ = k
            .run(
                0,
                &[
                    "delete",
                    "pod",
                    pod,
                    "--grace-period=1",
                    "--ignore-not-found",
                ],
                None,
            )
            .await;
    }
}
