//! Kubernetes pod features of the kubelet, seen through kubectl on a 3-node cluster running
//! real processes: postStart (exec and httpGet) and preStop hooks, failing ones reported as
//! events, resourceFieldRef env (with the node's allocatable for an unset limit), configMap items
//! and modes, a ConfigMap update reaching a mounted file, downwardAPI labels following a
//! label change, a projected volume, a memory-backed emptyDir, and a hostPort reachable on
//! the node's address.
//!
//! The busybox image comes from `scripts/build-busybox-image.sh` (Debian's busybox-static);
//! without it the test says so and stops. Pods run in parallel on one cluster.

use std::time::Duration;

use flotilla_tests::kubectl::busybox_cluster;
use flotilla_tests::{CONVERGE, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// postStart writes a file the container waits for; preStop and the container's SIGTERM
/// trap append to a hostPath file in the order they run.
fn hooks_pod(host_dir: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: hooks}}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 20
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, 'trap \"echo term >> /host/order; exit 0\" TERM; until [ -f /tmp/hook ]; do sleep 0.2; done; cat /tmp/hook; echo node-cpus=$NODE_CPUS; while true; do sleep 1; done']
    env:
    - name: NODE_CPUS
      valueFrom:
        resourceFieldRef: {{resource: limits.cpu}}
    lifecycle:
      postStart:
        exec: {{command: [sh, -c, 'echo written-by-post-start > /tmp/hook']}}
      preStop:
        exec: {{command: [sh, -c, 'echo prestop >> /host/order; sleep 1']}}
    volumeMounts: [{{name: host, mountPath: /host}}]
  volumes:
  - name: host
    hostPath: {{path: {host_dir}, type: DirectoryOrCreate}}
"
    )
}

const BAD_HOOK: &str = "apiVersion: v1
kind: Pod
metadata: {name: bad-hook}
spec:
  nodeName: node-3
  restartPolicy: Never
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.36
    command: [sleep, '3600']
    lifecycle:
      postStart:
        exec: {command: [sh, -c, 'echo hook-broke; exit 7']}
";

const VOLUMES: &str = "apiVersion: v1
kind: Pod
metadata:
  name: volumes
  labels: {app: demo}
spec:
  nodeName: node-2
  containers:
  - name: main
    image: busybox:1.36
    command:
    - sh
    - -c
    - |
      echo items=$(ls /items) mode=$(stat -L -c %a /items/sub/greet.txt) text=$(cat /items/sub/greet.txt) default=$(stat -L -c %a /all/other)
      echo projected=$(cat /projected/greeting)/$(cat /projected/secret/pass)/$(cat /projected/name) passmode=$(stat -L -c %a /projected/secret/pass)
      echo mem=$MEM_MI cpu=$CPU_M cpureq=$CPU_REQ_M
      echo cache=$(grep ' /cache ' /proc/mounts)
      echo secretfs=$(grep ' /projected ' /proc/mounts | cut -d' ' -f3)
      echo subpath=$(cat /fixed)
      while true; do echo live=$(cat /all/greeting) labels=$(tr '\\n' , < /podinfo/labels) fixed=$(cat /fixed); sleep 0.5; done
    env:
    - name: MEM_MI
      valueFrom:
        resourceFieldRef: {resource: limits.memory, divisor: 1Mi}
    - name: CPU_M
      valueFrom:
        resourceFieldRef: {resource: limits.cpu, divisor: 1m}
    - name: CPU_REQ_M
      valueFrom:
        resourceFieldRef: {containerName: main, resource: requests.cpu, divisor: 1m}
    resources:
      requests: {cpu: 100m, memory: 16Mi}
      limits: {cpu: 250m, memory: 64Mi}
    volumeMounts:
    - {name: items, mountPath: /items}
    - {name: all, mountPath: /all}
    - {name: all, mountPath: /fixed, subPath: greeting}
    - {name: podinfo, mountPath: /podinfo}
    - {name: projected, mountPath: /projected}
    - {name: cache, mountPath: /cache}
  volumes:
  - name: items
    configMap:
      name: app
      defaultMode: 0440
      items:
      - {key: greeting, path: sub/greet.txt, mode: 0400}
  - name: all
    configMap: {name: app, defaultMode: 0600}
  - name: podinfo
    downwardAPI:
      items:
      - path: labels
        fieldRef: {fieldPath: metadata.labels}
  - name: projected
    projected:
      defaultMode: 0444
      sources:
      - configMap:
          name: app
          items: [{key: greeting, path: greeting}]
      - secret:
          name: creds
          items: [{key: password, path: secret/pass, mode: 0400}]
      - downwardAPI:
          items: [{path: name, fieldRef: {fieldPath: metadata.name}}]
  - name: cache
    emptyDir: {medium: Memory, sizeLimit: 16Mi}
";

/// Waits for a ConfigMap that does not exist yet.
const WAITS: &str = "apiVersion: v1
kind: Pod
metadata: {name: waits}
spec:
  nodeName: node-1
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: busybox:1.36
    command: [sh, -c, 'cat /late/key; echo; sleep 3600']
    volumeMounts: [{name: late, mountPath: /late}]
  volumes:
  - name: late
    configMap: {name: late}
";

fn ported_pod(host_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: ported}}
spec:
  nodeName: node-3
  terminationGracePeriodSeconds: 1
  containers:
  - name: web
    image: busybox:1.36
    command: [sh, -c, 'mkdir -p /www && echo served-through-host-port > /www/index.html && echo ok > /www/post-start-hook && exec httpd -f -vv -p 8080 -h /www']
    ports:
    - {{containerPort: 8080, hostPort: {host_port}}}
  - name: caller
    image: busybox:1.36
    command: [sleep, '3600']
    lifecycle:
      postStart:
        httpGet: {{path: /post-start-hook, port: 8080}}
      preStop:
        exec: {{command: [sh, -c, 'echo pre-stop-broke; exit 3']}}
"
    )
}

/// `GET /index.html` from `addr`; the response body.
async fn http_get(addr: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await??;
    s.write_all(b"GET /index.html HTTP/1.0\r\nHost: test\r\n\r\n")
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hooks_volumes_downward_api_and_host_ports_work_as_in_kubernetes() {
    let Some((_cluster, k)) = busybox_cluster("kubelet-features", 3, &[]).await else {
        return;
    };
    // Isolated pods (own network namespace, tmpfs mounts) need root.
    let root = nix::unistd::geteuid().is_root();

    let host_dir = tempfile::tempdir().unwrap();
    let host_log = host_dir.path().join("log");
    let host_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    k.ok(
        0,
        &[
            "create",
            "configmap",
            "app",
            "--from-literal=greeting=hello",
            "--from-literal=other=x",
        ],
        None,
    )
    .await;
    k.ok(
        1,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=s3cret",
        ],
        None,
    )
    .await;
    let hooks = hooks_pod(host_log.to_str().unwrap());
    let ported = ported_pod(host_port);
    for (i, manifest) in [hooks.as_str(), VOLUMES, ported.as_str(), BAD_HOOK, WAITS]
        .into_iter()
        .enumerate()
    {
        k.ok(i % 3, &["apply", "-f", "-"], Some(manifest)).await;
    }

    // postStart ran right after the container started: the container saw its file.
    eventually(CONVERGE, "the postStart hook's file", || async {
        let (ok, out, err) = k.run(0, &["logs", "hooks"], None).await;
        if !(ok && out.contains("written-by-post-start")) {
            let (_, described, _) = k
                .run(
                    0,
                    &[
                        "get",
                        "pod",
                        "hooks",
                        "-o",
                        "jsonpath={.status.containerStatuses[0].state}",
                    ],
                    None,
                )
                .await;
            anyhow::bail!(
                "{out}{err}\n{described}\nhost dir exists: {}",
                host_log.exists()
            );
        }
        Ok(())
    })
    .await
    .unwrap();

    // limits.cpu without a limit is the node's allocatable CPU.
    let node_cpus = k
        .ok(
            2,
            &[
                "get",
                "node",
                "node-1",
                "-o",
                "jsonpath={.status.allocatable.cpu}",
            ],
            None,
        )
        .await;
    let hooks_log = k.ok(0, &["logs", "hooks"], None).await;
    assert!(
        hooks_log.contains(&format!("node-cpus={node_cpus}\n")),
        "{hooks_log} (node: {node_cpus})"
    );

    // Volumes and env, as the container printed them at start.
    let first = eventually(CONVERGE, "the volumes pod's report", || async {
        let (ok, out, err) = k.run(1, &["logs", "volumes"], None).await;
        anyhow::ensure!(ok && out.contains("live="), "{out}{err}");
        Ok(out)
    })
    .await
    .unwrap();
    // Items pick keys and paths; item mode beats defaultMode, defaultMode applies to the rest.
    assert!(
        first.contains("items=sub mode=400 text=hello default=600"),
        "{first}"
    );
    assert!(
        first.contains("projected=hello/s3cret/volumes passmode=400"),
        "{first}"
    );
    // 64Mi in Mi, 250m in millicores, the request of the named container.
    assert!(first.contains("mem=64 cpu=250 cpureq=100"), "{first}");
    assert!(first.contains("subpath=hello"), "{first}");
    if root {
        assert!(first.contains("cache=tmpfs /cache tmpfs"), "{first}");
        assert!(first.contains("size=16384k"), "{first}");
        // Secrets (here in a projected volume) stay off the node's disk.
        assert!(first.contains("secretfs=tmpfs\n"), "{first}");
    }
    assert!(
        first.contains("live=hello labels=app=\"demo\" fixed=hello"),
        "{first}"
    );

    // A ConfigMap update and a label change reach the mounted files of the running container;
    // the subPath mount keeps what it had, as in Kubernetes.
    k.ok(
        2,
        &[
            "patch",
            "configmap",
            "app",
            "-p",
            r#"{"data":{"greeting":"bonjour"}}"#,
        ],
        None,
    )
    .await;
    k.ok(0, &["label", "pod", "volumes", "tier=gold"], None)
        .await;
    eventually(CONVERGE, "the update in the mounted files", || async {
        let (ok, out, err) = k.run(1, &["logs", "volumes", "--tail=1"], None).await;
        anyhow::ensure!(
            ok && out.contains("live=bonjour labels=app=\"demo\",tier=\"gold\" fixed=hello"),
            "{out}{err}"
        );
        Ok(())
    })
    .await
    .unwrap();
    let restarts = k
        .ok(
            2,
            &[
                "get",
                "pod",
                "volumes",
                "-o",
                "jsonpath={.status.containerStatuses[0].restartCount}",
            ],
            None,
        )
        .await;
    assert_eq!(restarts, "0", "updates do not restart the container");

    // hostPort: the container's port on the node's address (127.0.0.1 for test nodes). With
    // isolation the forwarder is what makes it reachable; without, the container's own port
    // is the node's, which serves the same answer.
    if root {
        let addr = format!("127.0.0.1:{host_port}");
        eventually(CONVERGE, "the hostPort", || async {
            let body = http_get(&addr).await?;
            anyhow::ensure!(body.contains("served-through-host-port"), "{body}");
            Ok(())
        })
        .await
        .unwrap();
    }

    // An httpGet postStart hook reached the pod's other container on its own localhost.
    eventually(CONVERGE, "the httpGet hook in the server's log", || async {
        let (_, out, _) = k.run(1, &["logs", "ported", "-c", "web"], None).await;
        anyhow::ensure!(out.contains("url:/post-start-hook"), "{out}");
        Ok(())
    })
    .await
    .unwrap();

    // A failing postStart kills the container and says why.
    eventually(CONVERGE, "the FailedPostStartHook event", || async {
        let (_, out, _) = k.run(2, &["describe", "pod", "bad-hook"], None).await;
        anyhow::ensure!(
            out.contains("FailedPostStartHook") && out.contains("hook-broke"),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();
    eventually(CONVERGE, "bad-hook Failed", || async {
        let (_, out, _) = k
            .run(
                0,
                &["get", "pod", "bad-hook", "-o", "jsonpath={.status.phase}"],
                None,
            )
            .await;
        anyhow::ensure!(out == "Failed", "{out}");
        Ok(())
    })
    .await
    .unwrap();

    // A missing ConfigMap holds the container back and says so; once created, it starts.
    eventually(CONVERGE, "waits held back", || async {
        let (_, out, _) = k
            .run(
                2,
                &[
                    "get",
                    "pod",
                    "waits",
                    "-o",
                    "jsonpath={.status.containerStatuses[0].state.waiting}",
                ],
                None,
            )
            .await;
        anyhow::ensure!(
            out.contains("CreateContainerConfigError")
                && out.contains(r#"configmap \"late\" not found"#),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();
    k.ok(
        0,
        &["create", "configmap", "late", "--from-literal=key=arrived"],
        None,
    )
    .await;
    eventually(CONVERGE, "waits started", || async {
        let (ok, out, err) = k.run(1, &["logs", "waits"], None).await;
        if !(ok && out.contains("arrived")) {
            let (_, status, _) = k
                .run(
                    1,
                    &["get", "pod", "waits", "-o", "jsonpath={.status}"],
                    None,
                )
                .await;
            anyhow::bail!("{out}{err}\n{status}");
        }
        Ok(())
    })
    .await
    .unwrap();

    // preStop runs before the container gets SIGTERM on `kubectl delete`.
    k.ok(1, &["delete", "pod", "hooks"], None).await;
    let order = std::fs::read_to_string(host_log.join("order")).unwrap_or_default();
    assert_eq!(order, "prestop\nterm\n");

    for pod in ["volumes", "ported", "bad-hook", "waits"] {
        k.ok(0, &["delete", "pod", pod, "--grace-period=1"], None)
            .await;
    }
    // A failing preStop hook is reported, and the pod still goes.
    let events = k
        .ok(
            2,
            &[
                "get",
                "events",
                "-o",
                "jsonpath={range .items[*]}{.reason}: {.message}{\"\\n\"}{end}",
            ],
            None,
        )
        .await;
    assert!(
        events
            .lines()
            .any(|l| l.starts_with("FailedPreStopHook") && l.contains("pre-stop-broke")),
        "{events}"
    );
    if root {
        // The forwarder went with the pod.
        let addr = format!("127.0.0.1:{host_port}");
        eventually(CONVERGE, "the hostPort closed", || async {
            anyhow::ensure!(http_get(&addr).await.is_err(), "still served");
            Ok(())
        })
        .await
        .unwrap();
    }
    let left = k.ok(1, &["get", "pods", "-o", "name"], None).await;
    assert!(left.trim().is_empty(), "{left}");
}
