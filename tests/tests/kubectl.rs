//! Real kubectl 1.33 against a 3-node cluster, talking to a different node per command.
//!
//! Proves the first slice of the Kubernetes API: `/version`, aggregated discovery
//! (`api-resources`, short names), the standard namespaces, and create / get / list (label
//! selectors, `-A`, tables) / replace / apply / label / annotate / patch (merge, JSON) /
//! scale (the `scale` subresource) / delete of stored objects, with kubectl's own error
//! messages for AlreadyExists, NotFound and Invalid; `kubectl get -w` and a watch resumed from
//! an old resourceVersion see ADDED, MODIFIED, DELETED in order; WatchList is refused with 422.
//! Writes go through one node and are read back through the others.
//!
//! kubectl comes from `../shared/tools/fetch-kubectl.sh` (run on first use, into
//! `.tools/bin`), or from `$KUBECTL`.

use flotilla_tests::kubectl::{Kubectl, kubectl_binary};
use flotilla_tests::{CONVERGE, TestCluster, eventually};

const CONFIGMAP: &str = "apiVersion: v1
kind: ConfigMap
metadata:
  name: demo
  labels:
    app: web
data:
  a: \"1\"
  b: \"2\"
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_drives_discovery_and_object_crud_through_every_node() {
    let binary = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let cluster = TestCluster::start("kubectl", 3, 3, &[]).await.unwrap();
    let k = Kubectl {
        binary,
        kubeconfig: cluster.kubeconfig_path(),
    };

    let version = k.ok(1, &["version"], None).await;
    assert!(version.contains("Server Version: v1.33"), "{version}");

    let resources = k.ok(2, &["api-resources"], None).await;
    for expected in [
        "deployments",
        "apps/v1",
        "configmaps",
        "namespaces",
        "cronjobs",
        "ingresses",
    ] {
        assert!(
            resources.contains(expected),
            "api-resources lacks {expected}:\n{resources}"
        );
    }

    // The standard namespaces exist from the start (created once a leader is known).
    eventually(CONVERGE, "the standard namespaces", || async {
        let (ok, out, err) = k.run(0, &["get", "ns"], None).await;
        anyhow::ensure!(ok, "{err}");
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            anyhow::ensure!(out.contains(ns), "no {ns} in:\n{out}");
        }
        anyhow::ensure!(out.contains("Active"), "{out}");
        Ok(())
    })
    .await
    .unwrap();

    // Create through node 1; read through nodes 2 and 3 (short name, table, -o jsonpath, -A).
    let created = k
        .ok(
            0,
            &["create", "--validate=false", "-f", "-"],
            Some(CONFIGMAP),
        )
        .await;
    assert!(created.contains("configmap/demo created"), "{created}");
    let table = k.ok(1, &["get", "cm"], None).await;
    assert!(
        table.contains("DATA")
            && table
                .lines()
                .any(|l| l.starts_with("demo") && l.contains(" 2 ")),
        "{table}"
    );
    let value = k
        .ok(
            2,
            &["get", "configmap", "demo", "-o", "jsonpath={.data.b}"],
            None,
        )
        .await;
    assert_eq!(value, "2");
    let all = k.ok(2, &["get", "cm", "-A"], None).await;
    assert!(
        all.lines()
            .any(|l| l.starts_with("default") && l.contains("demo")),
        "{all}"
    );
    let selected = k
        .ok(1, &["get", "cm", "-l", "app=web", "-o", "name"], None)
        .await;
    assert_eq!(selected.trim(), "configmap/demo");
    let none = k
        .ok(
            1,
            &["get", "cm", "-l", "app in (db,cache)", "-o", "name"],
            None,
        )
        .await;
    assert_eq!(none.trim(), "");

    // kubectl's own error messages.
    let exists = k
        .fails(
            1,
            &["create", "--validate=false", "-f", "-"],
            Some(CONFIGMAP),
        )
        .await;
    assert!(
        exists.contains("Error from server (AlreadyExists)")
            && exists.contains("configmaps \"demo\" already exists"),
        "{exists}"
    );
    let missing = k.fails(2, &["get", "cm", "nope"], None).await;
    assert!(
        missing.contains("Error from server (NotFound): configmaps \"nope\" not found"),
        "{missing}"
    );
    let invalid = k
        .fails(
            0,
            &["create", "--validate=false", "-f", "-"],
            Some("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: Bad_Name\n"),
        )
        .await;
    assert!(
        invalid.contains("is invalid") && invalid.contains("metadata.name"),
        "{invalid}"
    );
    let no_ns = k
        .fails(
            1,
            &["create", "--validate=false", "-n", "ghost", "-f", "-"],
            Some(CONFIGMAP),
        )
        .await;
    assert!(no_ns.contains("namespaces \"ghost\" not found"), "{no_ns}");

    // Replace bumps the resourceVersion; delete through one node is seen by another.
    let rv_before = k
        .ok(
            0,
            &[
                "get",
                "cm",
                "demo",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
            None,
        )
        .await;
    let changed = CONFIGMAP.replace("b: \"2\"", "b: \"3\"");
    k.ok(
        1,
        &["replace", "--validate=false", "-f", "-"],
        Some(&changed),
    )
    .await;
    let rv_after = k
        .ok(
            2,
            &[
                "get",
                "cm",
                "demo",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
            None,
        )
        .await;
    assert!(rv_after.parse::<u64>().unwrap() > rv_before.parse::<u64>().unwrap());
    assert_eq!(
        k.ok(0, &["get", "cm", "demo", "-o", "jsonpath={.data.b}"], None)
            .await,
        "3"
    );
    let deleted = k.ok(2, &["delete", "cm", "demo"], None).await;
    assert!(deleted.contains("configmap \"demo\" deleted"), "{deleted}");
    let gone = k.fails(0, &["get", "cm", "demo"], None).await;
    assert!(gone.contains("NotFound"), "{gone}");

    // Client-side apply: create, unchanged, configured (a strategic merge PATCH); label,
    // annotate, merge and JSON patches, each through a different node.
    let applied = CONFIGMAP.replace("name: demo", "name: applied");
    assert!(
        k.ok(0, &["apply", "--validate=false", "-f", "-"], Some(&applied))
            .await
            .contains("created")
    );
    assert!(
        k.ok(1, &["apply", "--validate=false", "-f", "-"], Some(&applied))
            .await
            .contains("unchanged")
    );
    let reapplied = applied.replace("b: \"2\"", "b: \"5\"");
    assert!(
        k.ok(
            2,
            &["apply", "--validate=false", "-f", "-"],
            Some(&reapplied)
        )
        .await
        .contains("configured")
    );
    k.ok(0, &["label", "cm", "applied", "tier=fe"], None).await;
    k.ok(1, &["annotate", "cm", "applied", "note=hi"], None)
        .await;
    k.ok(
        2,
        &[
            "patch",
            "cm",
            "applied",
            "--type",
            "merge",
            "-p",
            r#"{"data":{"c":"3"}}"#,
        ],
        None,
    )
    .await;
    k.ok(
        0,
        &[
            "patch",
            "cm",
            "applied",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/data/a"}]"#,
        ],
        None,
    )
    .await;
    let state = k
        .ok(1, &["get", "cm", "applied", "-o", "jsonpath={.data.b},{.data.c},{.data.a},{.metadata.labels.tier},{.metadata.annotations.note}"], None)
        .await;
    assert_eq!(state, "5,3,,fe,hi");
    let failed_test = k
        .fails(
            2,
            &[
                "patch",
                "cm",
                "applied",
                "--type",
                "json",
                "-p",
                r#"[{"op":"test","path":"/data/b","value":"nope"}]"#,
            ],
            None,
        )
        .await;
    assert!(failed_test.contains("is invalid"), "{failed_test}");
    k.ok(0, &["delete", "cm", "applied"], None).await;

    // `kubectl scale` patches the deployment's `scale` subresource (an autoscaling/v1 Scale).
    let deployment = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: hello
spec:
  replicas: 1
  selector:
    matchLabels:
      app: hello
  template:
    metadata:
      labels:
        app: hello
    spec:
      containers:
      - name: web
        image: busybox
";
    k.ok(
        0,
        &["apply", "--validate=false", "-f", "-"],
        Some(deployment),
    )
    .await;
    assert!(
        k.ok(1, &["scale", "deployment", "hello", "--replicas=3"], None)
            .await
            .contains("scaled")
    );
    let scale: serde_json::Value = serde_json::from_str(
        &k.ok(
            2,
            &[
                "get",
                "--raw",
                "/apis/apps/v1/namespaces/default/deployments/hello/scale",
            ],
            None,
        )
        .await,
    )
    .unwrap();
    assert_eq!(scale["kind"], "Scale");
    assert_eq!(scale["spec"]["replicas"], 3);
    assert_eq!(scale["status"]["selector"], "app=hello");
    assert_eq!(
        k.ok(
            0,
            &[
                "get",
                "deploy",
                "hello",
                "-o",
                "jsonpath={.spec.replicas},{.metadata.generation}"
            ],
            None
        )
        .await,
        "3,2"
    );
    k.ok(0, &["delete", "deployment", "hello"], None).await;

    // Watch: `kubectl get -w` sees a create, a change and a delete made through other nodes.
    let mut watcher = k.spawn(&[
        "get",
        "cm",
        "-w",
        "--output-watch-events",
        "-o",
        "jsonpath={.type} {.object.metadata.name} {.object.data.v}{\"\\n\"}",
    ]);
    let start_rv: u64 = k
        .ok(
            1,
            &[
                "get",
                "ns",
                "default",
                "-o",
                "jsonpath={.metadata.resourceVersion}",
            ],
            None,
        )
        .await
        .parse()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let watched =
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: watched\ndata:\n  v: \"1\"\n";
    k.ok(1, &["create", "--validate=false", "-f", "-"], Some(watched))
        .await;
    k.ok(
        2,
        &["replace", "--validate=false", "-f", "-"],
        Some(&watched.replace("v: \"1\"", "v: \"2\"")),
    )
    .await;
    k.ok(1, &["delete", "cm", "watched"], None).await;
    let mut stdout = watcher.stdout.take().unwrap();
    let lines = tokio::time::timeout(CONVERGE, async {
        use tokio::io::AsyncReadExt;
        let mut text = String::new();
        let mut buf = [0u8; 4096];
        while !text.contains("DELETED watched") {
            let n = stdout.read(&mut buf).await.unwrap();
            assert!(n > 0, "kubectl get -w ended early: {text}");
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        text
    })
    .await
    .expect("watch events within the deadline");
    let events: Vec<&str> = lines.lines().filter(|l| l.contains("watched")).collect();
    assert_eq!(
        events,
        ["ADDED watched 1", "MODIFIED watched 2", "DELETED watched 2"],
        "{lines}"
    );
    watcher.kill().await.unwrap();

    // Resuming from an old resourceVersion replays the same history, in order.
    let replay = k
        .ok(
            2,
            &["get", "--raw", &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={start_rv}&timeoutSeconds=2")],
            None,
        )
        .await;
    let kinds: Vec<String> = replay
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["object"]["metadata"]["name"] == "watched")
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"], "{replay}");
    // WatchList is refused, not ignored (so clients fall back to LIST + WATCH).
    let refused = k
        .fails(
            0,
            &["get", "--raw", "/api/v1/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"],
            None,
        )
        .await;
    assert!(refused.contains("sendInitialEvents"), "{refused}");

    cluster.stop().await.unwrap();
}

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports:
        - containerPort: 80
        resources:
          limits: {cpu: 500m, memory: 128Mi}
";

/// The everyday workflows with kubectl's defaults: validation through OpenAPI, client-side and
/// server-side apply, the protobuf generators, expose, explain, describe, namespaces that
/// empty themselves on delete, dry runs and paged lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_default_workflows_validate_apply_create_expose_and_delete() {
    let binary = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let cluster = TestCluster::start("kubectl-flows", 3, 3, &[])
        .await
        .unwrap();
    let k = Kubectl {
        binary,
        kubeconfig: cluster.kubeconfig_path(),
    };
    eventually(CONVERGE, "the default namespace", || async {
        let (ok, out, err) = k.run(0, &["get", "ns", "default"], None).await;
        anyhow::ensure!(ok && out.contains("Active"), "{out}{err}");
        Ok(())
    })
    .await
    .unwrap();

    let info = k.ok(1, &["cluster-info"], None).await;
    assert!(
        info.contains("Kubernetes control plane") && info.contains("https://127.0.0.1"),
        "{info}"
    );

    // Client-side apply with default validation (OpenAPI v3, fieldValidation=Strict): created,
    // configured when changed, unchanged when not.
    let out = k.ok(0, &["apply", "-f", "-"], Some(DEPLOYMENT)).await;
    assert!(out.contains("deployment.apps/web created"), "{out}");
    let scaled = DEPLOYMENT.replace("replicas: 2", "replicas: 3");
    let out = k.ok(1, &["apply", "-f", "-"], Some(&scaled)).await;
    assert!(out.contains("deployment.apps/web configured"), "{out}");
    let out = k.ok(2, &["apply", "-f", "-"], Some(&scaled)).await;
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    // Defaults the apiserver fills in are there, and the container kept its ports through the
    // strategic merge.
    let live = k
        .ok(
            0,
            &[
                "get",
                "deploy",
                "web",
                "-o",
                "jsonpath={.spec.replicas} {.spec.strategy.type} {.spec.template.spec.containers[0].ports[0].containerPort}",
            ],
            None,
        )
        .await;
    assert_eq!(live, "3 RollingUpdate 80");

    // An unknown field is refused with kubectl's strict-validation message, and nothing changes.
    let typo = scaled.replace("replicas: 3", "replicass: 4");
    let err = k.fails(1, &["apply", "-f", "-"], Some(&typo)).await;
    assert!(
        err.contains("strict decoding error: unknown field \"spec.replicass\""),
        "{err}"
    );
    // With --validate=warn it goes through with a warning, and the unknown field is dropped.
    let (ok, _, err) = k
        .run(2, &["apply", "--validate=warn", "-f", "-"], Some(&typo))
        .await;
    assert!(
        ok && err.contains("unknown field \"spec.replicass\""),
        "{err}"
    );
    let spec = k
        .ok(0, &["get", "deploy", "web", "-o", "jsonpath={.spec}"], None)
        .await;
    assert!(!spec.contains("replicass"), "{spec}");

    // Server-side apply: create, a conflict with another manager's change, then --force-conflicts.
    let ssa = DEPLOYMENT.replace("name: web\n", "name: api\n");
    let out = k
        .ok(0, &["apply", "--server-side", "-f", "-"], Some(&ssa))
        .await;
    assert!(
        out.contains("deployment.apps/api serverside-applied"),
        "{out}"
    );
    k.ok(
        1,
        &[
            "patch",
            "deploy",
            "api",
            "--type=merge",
            "--field-manager=ops",
            "-p",
            r#"{"spec":{"replicas":7}}"#,
        ],
        None,
    )
    .await;
    let err = k
        .fails(2, &["apply", "--server-side", "-f", "-"], Some(&ssa))
        .await;
    assert!(
        err.contains("conflict with \"ops\"") && err.contains(".spec.replicas"),
        "{err}"
    );
    k.ok(
        0,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&ssa),
    )
    .await;
    let managed = k
        .ok(
            1,
            &[
                "get",
                "deploy",
                "api",
                "--show-managed-fields",
                "-o",
                "jsonpath={.spec.replicas} {.metadata.managedFields[*].manager}",
            ],
            None,
        )
        .await;
    assert!(managed.starts_with("2 "), "{managed}");
    assert!(managed.contains("kubectl"), "{managed}");

    // explain reads the OpenAPI schemas.
    let explained = k
        .ok(2, &["explain", "deployment.spec.strategy"], None)
        .await;
    assert!(
        explained.contains("KIND:       Deployment") && explained.contains("rollingUpdate"),
        "{explained}"
    );

    // The typed generators send protobuf.
    k.ok(0, &["create", "namespace", "team-a"], None).await;
    let out = k
        .ok(
            1,
            &[
                "create",
                "deployment",
                "hello",
                "--image=nginx:1.27",
                "-n",
                "team-a",
            ],
            None,
        )
        .await;
    assert!(out.contains("deployment.apps/hello created"), "{out}");
    k.ok(
        2,
        &[
            "create",
            "configmap",
            "settings",
            "--from-literal=mode=fast",
            "-n",
            "team-a",
        ],
        None,
    )
    .await;
    k.ok(
        0,
        &[
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=password=s3cr3t",
            "-n",
            "team-a",
        ],
        None,
    )
    .await;
    let secret = k
        .ok(
            1,
            &[
                "get",
                "secret",
                "creds",
                "-n",
                "team-a",
                "-o",
                "jsonpath={.data.password} {.type}",
            ],
            None,
        )
        .await;
    assert_eq!(secret, "czNjcjN0 Opaque");
    let image = k
        .ok(
            2,
            &["get", "deploy", "hello", "-n", "team-a", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.strategy.rollingUpdate.maxSurge}"],
            None,
        )
        .await;
    assert_eq!(image, "nginx:1.27 25%");

    // expose allocates a cluster IP from the service range and a node port.
    k.ok(
        0,
        &[
            "expose",
            "deployment",
            "hello",
            "--port=8080",
            "--type=NodePort",
            "-n",
            "team-a",
        ],
        None,
    )
    .await;
    let svc = k
        .ok(
            1,
            &[
                "get",
                "svc",
                "hello",
                "-n",
                "team-a",
                "-o",
                "jsonpath={.spec.clusterIP} {.spec.ports[0].nodePort} {.spec.ports[0].targetPort}",
            ],
            None,
        )
        .await;
    let parts: Vec<&str> = svc.split(' ').collect();
    assert_eq!(parts.len(), 3, "{svc}");
    assert!(parts[0].starts_with("10."), "cluster IP {svc}");
    let port: u16 = parts[1].parse().unwrap();
    assert!((30000..=32767).contains(&port), "node port {svc}");
    assert_eq!(parts[2], "8080");

    // describe, get all.
    let described = k
        .ok(
            2,
            &["describe", "deployment", "hello", "-n", "team-a"],
            None,
        )
        .await;
    assert!(
        described.contains("Name:")
            && described.contains("hello")
            && described.contains("nginx:1.27"),
        "{described}"
    );
    let all = k.ok(0, &["get", "all", "-n", "team-a"], None).await;
    assert!(
        all.contains("service/hello") && all.contains("deployment.apps/hello"),
        "{all}"
    );

    // A server-side dry run validates and answers, and stores nothing.
    k.ok(
        1,
        &[
            "create",
            "configmap",
            "dry",
            "--from-literal=a=b",
            "--dry-run=server",
        ],
        None,
    )
    .await;
    k.fails(2, &["get", "cm", "dry"], None).await;

    // Paged lists: kubectl follows `continue` until the list is complete.
    for i in 0..5 {
        k.ok(
            i % 3,
            &[
                "create",
                "configmap",
                &format!("page-{i}"),
                "--from-literal=i=x",
            ],
            None,
        )
        .await;
    }
    let paged = k
        .ok(0, &["get", "cm", "--chunk-size=2", "-o", "name"], None)
        .await;
    for i in 0..5 {
        assert!(paged.contains(&format!("configmap/page-{i}")), "{paged}");
    }

    // A pod no node fits stays Pending, with its QoS class and the scheduler's reason; field
    // selectors the kubelet and kubectl use.
    k.ok(
        1,
        &[
            "run",
            "solo",
            "--image=nginx:1.27",
            "-n",
            "team-a",
            r#"--overrides={"spec":{"nodeSelector":{"example.com/pool":"none-such"},"containers":[{"name":"solo","image":"nginx:1.27","resources":{"requests":{"cpu":"100m"}}}]}}"#,
        ],
        None,
    )
    .await;
    let pending = k
        .ok(
            2,
            &[
                "get",
                "pods",
                "-n",
                "team-a",
                "--field-selector",
                "status.phase=Pending,spec.nodeName=",
                "-o",
                "jsonpath={.items[*].metadata.name} {.items[*].status.qosClass}",
            ],
            None,
        )
        .await;
    assert_eq!(pending, "solo Burstable");
    eventually(CONVERGE, "FailedScheduling for solo", || async {
        let (_, out, _) = k
            .run(2, &["describe", "pod", "solo", "-n", "team-a"], None)
            .await;
        anyhow::ensure!(
            out.contains("FailedScheduling")
                && out.contains(
                    "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."
                ),
            "{out}"
        );
        Ok(())
    })
    .await
    .unwrap();
    let err = k
        .fails(
            0,
            &["get", "pods", "--field-selector", "spec.colour=blue"],
            None,
        )
        .await;
    assert!(
        err.contains("field label not supported: spec.colour"),
        "{err}"
    );
    // Every namespace gets a default ServiceAccount.
    eventually(CONVERGE, "the default ServiceAccount of team-a", || async {
        let (ok, out, err) = k
            .run(0, &["get", "sa", "default", "-n", "team-a"], None)
            .await;
        anyhow::ensure!(ok, "{out}{err}");
        Ok(())
    })
    .await
    .unwrap();

    // Deleting a namespace marks it Terminating, empties it, then removes it; kubectl waits.
    let out = k.ok(1, &["delete", "namespace", "team-a"], None).await;
    assert!(out.contains("namespace \"team-a\" deleted"), "{out}");
    k.fails(2, &["get", "namespace", "team-a"], None).await;
    let left = k
        .ok(0, &["get", "all", "-n", "team-a", "-o", "name"], None)
        .await;
    assert!(left.trim().is_empty(), "{left}");
    // Its Service's node port was released with it: another Service may take it.
    let reuse = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: reuse\nspec:\n  type: NodePort\n  selector: {{app: x}}\n  ports:\n  - port: 80\n    nodePort: {port}\n"
    );
    k.ok(1, &["apply", "-f", "-"], Some(&reuse)).await;
    let out = k.ok(2, &["delete", "service", "reuse"], None).await;
    assert!(out.contains("service \"reuse\" deleted"), "{out}");
}

/// helm 4 (server-side apply, protobuf release Secrets) installs, upgrades and uninstalls the
/// chart `helm create` makes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_installs_upgrades_and_uninstalls_a_chart() {
    let kubectl = tokio::task::spawn_blocking(kubectl_binary).await.unwrap();
    let helm = kubectl.with_file_name("helm");
    let cluster = TestCluster::start("helm", 3, 3, &[]).await.unwrap();
    let k = Kubectl {
        binary: kubectl,
        kubeconfig: cluster.kubeconfig_path(),
    };
    eventually(CONVERGE, "the default namespace", || async {
        let (ok, out, err) = k.run(0, &["get", "ns", "default"], None).await;
        anyhow::ensure!(ok && out.contains("Active"), "{out}{err}");
        Ok(())
    })
    .await
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let helm_run = |args: &[&str]| {
        let out = std::process::Command::new(&helm)
            .args(args)
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .env("HOME", work.path())
            .current_dir(work.path())
            .output()
            .expect("running helm");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "helm {args:?} failed:\n{text}");
        text
    };
    helm_run(&["create", "web"]);
    let out = helm_run(&["install", "demo", "./web", "--set", "image.tag=1.27"]);
    assert!(out.contains("STATUS: deployed"), "{out}");
    let list = helm_run(&["list"]);
    assert!(list.contains("demo") && list.contains("deployed"), "{list}");
    let image = k
        .ok(
            1,
            &[
                "get",
                "deploy",
                "demo-web",
                "-o",
                "jsonpath={.spec.template.spec.containers[0].image}",
            ],
            None,
        )
        .await;
    assert_eq!(image, "nginx:1.27");
    helm_run(&["upgrade", "demo", "./web", "--set", "replicaCount=3"]);
    let replicas = k
        .ok(
            2,
            &[
                "get",
                "deploy",
                "demo-web",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
            None,
        )
        .await;
    assert_eq!(replicas, "3");
    let history = helm_run(&["history", "demo"]);
    assert!(
        history.contains("superseded") && history.contains("deployed"),
        "{history}"
    );
    helm_run(&["uninstall", "demo"]);
    let left = k
        .ok(0, &["get", "deploy,svc,sa,secret", "-o", "name"], None)
        .await;
    assert!(!left.contains("demo"), "{left}");
}
