//! The `flotilla` kubectl-like client commands (kube-rs over HTTPS with the cluster CA and
//! `tls-server-name`) against a 3-node cluster: apply of multi-document YAML and of a changed
//! file, get (tables, -o name/json/yaml, -l, -A, -w), describe with events, create, expose,
//! scale, delete with wait, and kubectl's error messages. Assertions are on what a user sees.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use flotilla_tests::flotilla_chaos::find_binary;
use flotilla_tests::{CONVERGE, TestCluster, eventually};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// Runs `flotilla` with the cluster's kubeconfig in `KUBECONFIG`, from a directory without a
/// `.flotilla/` of its own.
struct Cli {
    kubeconfig: PathBuf,
    cwd: PathBuf,
}

struct Out {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Cli {
    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Out {
        let mut child = tokio::process::Command::new(find_binary().unwrap())
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .current_dir(&self.cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("starting flotilla");
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            pipe.write_all(input.as_bytes()).await.unwrap();
        }
        drop(pipe);
        let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("flotilla {args:?} did not finish"))
            .unwrap();
        let out = Out {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        // Client commands never panic, whatever the outcome.
        assert!(!out.stderr.contains("panicked"), "{args:?}: {}", out.stderr);
        if !out.ok {
            assert_eq!(out.code, Some(1), "{args:?}: {}", out.stderr);
        }
        out
    }

    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args, None).await;
        assert!(
            out.ok,
            "flotilla {args:?} failed:\n{}\n{}",
            out.stdout, out.stderr
        );
        out.stdout
    }

    async fn fails(&self, args: &[&str]) -> Out {
        let out = self.run(args, None).await;
        assert!(
            !out.ok,
            "flotilla {args:?} should have failed:\n{}",
            out.stdout
        );
        out
    }

    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.ok(&all).await;
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const APP_V1: &str = "# A namespace, a deployment and its configuration.
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: front
  namespace: shop
  labels:
    app: front
    tier: web
spec:
  replicas: 2
  selector:
    matchLabels:
      app: front
  template:
    metadata:
      labels:
        app: front
    spec:
      containers:
      - name: nginx
        image: nginx:1.27
        ports:
        - containerPort: 80
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: front-config
  namespace: shop
  labels:
    app: front
data:
  mode: blue
";

const EVENT: &str = r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Event",
   "metadata": {"name": "front.1", "namespace": "shop"},
   "involvedObject": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "front", "namespace": "shop"},
   "reason": "Tested", "message": "Scaled up replica set front-abc to 3", "type": "Normal",
   "source": {"component": "deployment-controller"}, "count": 1,
   "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:00Z"},
  {"apiVersion": "v1", "kind": "Event",
   "metadata": {"name": "other.1", "namespace": "shop"},
   "involvedObject": {"apiVersion": "v1", "kind": "ConfigMap", "name": "front-config", "namespace": "shop"},
   "reason": "Unrelated", "message": "not about the deployment", "type": "Warning",
   "source": {"component": "someone"}, "count": 1}
]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_commands_work_like_kubectl() {
    let cluster = TestCluster::start("client-cli", 3, 3, &[]).await.unwrap();
    let work = tempfile::tempdir().unwrap();
    let cli = Cli {
        kubeconfig: cluster.kubeconfig_path(),
        cwd: work.path().to_owned(),
    };

    eventually(CONVERGE, "the default namespace", || async {
        let out = cli.run(&["get", "ns", "default", "-o", "name"], None).await;
        anyhow::ensure!(out.ok, "{}", out.stderr);
        anyhow::ensure!(out.stdout.trim() == "namespace/default", "{}", out.stdout);
        Ok(())
    })
    .await
    .unwrap();

    // apply: multi-document YAML, in order, server-side.
    let v1 = write(work.path(), "app.yaml", APP_V1);
    let applied = cli.ok(&["apply", "-f", &v1]).await;
    assert_eq!(
        applied,
        "namespace/shop serverside-applied\ndeployment.apps/front serverside-applied\nconfigmap/front-config serverside-applied\n"
    );
    // A changed file, applied from a directory (only its .yaml/.yml/.json files).
    let dir = work.path().join("manifests");
    std::fs::create_dir(&dir).unwrap();
    write(
        &dir,
        "app.yaml",
        &APP_V1
            .replace("replicas: 2", "replicas: 3")
            .replace("mode: blue", "mode: green"),
    );
    write(&dir, "README.md", "not a manifest");
    let applied = cli.ok(&["apply", "-f", &dir.display().to_string()]).await;
    assert_eq!(applied.lines().count(), 3, "{applied}");
    let deploy = cli
        .json(&["get", "deployment", "front", "-n", "shop"])
        .await;
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(deploy["kind"], "Deployment");
    assert!(
        deploy["metadata"].get("managedFields").is_none(),
        "managedFields are hidden like kubectl does: {deploy}"
    );
    // Read back through another node (another context of the same kubeconfig).
    let cm = cli
        .json(&[
            "get",
            "cm",
            "front-config",
            "-n",
            "shop",
            "--context",
            "flotilla-node-3",
        ])
        .await;
    assert_eq!(cm["data"]["mode"], "green");
    // Events arrive from stdin as a `kind: List`.
    let out = cli.run(&["apply", "-f", "-"], Some(EVENT)).await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.stdout,
        "event/front.1 serverside-applied\nevent/other.1 serverside-applied\n"
    );

    // get: the server's table, aligned like kubectl's.
    let table = cli.ok(&["get", "deploy", "-n", "shop"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0], "NAME    READY   UP-TO-DATE   AVAILABLE   AGE",
        "{table}"
    );
    // READY is x/3 whatever the controllers did so far.
    assert!(
        lines[1].starts_with("front   ")
            && lines[1][8..].split(' ').next().unwrap().ends_with("/3"),
        "{table}"
    );
    let wide = cli
        .ok(&["get", "deployments.apps", "-n", "shop", "-o", "wide"])
        .await;
    assert!(
        wide.lines()
            .next()
            .unwrap()
            .ends_with("CONTAINERS   IMAGES       SELECTOR"),
        "{wide}"
    );
    assert!(
        wide.contains("nginx        nginx:1.27   app=front"),
        "{wide}"
    );
    let names = cli
        .ok(&[
            "get",
            "deploy,cm",
            "-n",
            "shop",
            "-l",
            "app=front",
            "-o",
            "name",
        ])
        .await;
    assert_eq!(names, "deployment.apps/front\nconfigmap/front-config\n");
    let all = cli
        .ok(&["get", "configmaps", "-A", "-l", "app=front"])
        .await;
    let lines: Vec<&str> = all.lines().collect();
    assert!(
        lines[0].starts_with("NAMESPACE   NAME           DATA   AGE"),
        "{all}"
    );
    assert!(
        lines[1].starts_with("shop        front-config   1      "),
        "{all}"
    );
    let list = cli
        .json(&["get", "cm", "-n", "shop", "-l", "app=front"])
        .await;
    assert_eq!(list["kind"], "List");
    assert_eq!(list["items"][0]["metadata"]["name"], "front-config");
    let yaml = cli
        .ok(&["get", "cm/front-config", "-n", "shop", "-o", "yaml"])
        .await;
    assert!(
        yaml.starts_with("apiVersion: v1\ndata:\n  mode: green\nkind: ConfigMap\n"),
        "{yaml}"
    );
    let empty = cli
        .run(&["get", "cm", "-n", "shop", "-l", "app=none"], None)
        .await;
    assert!(empty.ok && empty.stdout.is_empty(), "{}", empty.stdout);
    assert_eq!(empty.stderr, "No resources found in shop namespace.\n");

    // describe: metadata, the object, and only the events about it.
    let described = cli
        .ok(&["describe", "deployment", "front", "-n", "shop"])
        .await;
    for expected in [
        "Name:               front\n",
        "Namespace:          shop\n",
        "Labels:             app=front\n                    tier=web\n",
        "Replicas:           3 desired | ",
        "image: nginx:1.27",
        "Events:\n  Type    Reason  Age",
        "  Normal  Tested  ",
        "deployment-controller  Scaled up replica set front-abc to 3\n",
    ] {
        assert!(
            described.contains(expected),
            "no {expected:?} in:\n{described}"
        );
    }
    assert!(!described.contains("Unrelated"), "{described}");
    let described = cli.ok(&["describe", "ns", "default"]).await;
    assert!(
        described.contains("Events:             <none>"),
        "{described}"
    );

    // create: namespace, configmap, secret, deployment.
    assert_eq!(
        cli.ok(&["create", "namespace", "team"]).await,
        "namespace/team created\n"
    );
    assert_eq!(
        cli.ok(&[
            "create",
            "configmap",
            "settings",
            "-n",
            "team",
            "--from-literal=a=1",
            "--from-literal=b=two=2"
        ])
        .await,
        "configmap/settings created\n"
    );
    let settings = cli.json(&["get", "cm", "settings", "-n", "team"]).await;
    assert_eq!(
        settings["data"],
        serde_json::json!({"a": "1", "b": "two=2"})
    );
    assert_eq!(
        cli.ok(&[
            "create",
            "secret",
            "generic",
            "creds",
            "-n",
            "team",
            "--from-literal=password=s3cret"
        ])
        .await,
        "secret/creds created\n"
    );
    let secret = cli.json(&["get", "secret", "creds", "-n", "team"]).await;
    assert_eq!(secret["data"]["password"], "czNjcmV0");
    assert_eq!(secret["type"], "Opaque");
    let described = cli.ok(&["describe", "secret", "creds", "-n", "team"]).await;
    assert!(described.contains("password:  6 bytes"), "{described}");
    assert!(!described.contains("s3cret") && !described.contains("czNjcmV0"));
    assert_eq!(
        cli.ok(&[
            "create",
            "deployment",
            "api",
            "-n",
            "team",
            "--image=busybox:1.36",
            "--replicas=2",
            "--port=8080"
        ])
        .await,
        "deployment.apps/api created\n"
    );
    let api = cli.json(&["get", "deploy", "api", "-n", "team"]).await;
    assert_eq!(api["metadata"]["labels"]["app"], "api");
    assert_eq!(api["spec"]["selector"]["matchLabels"]["app"], "api");
    let container = &api["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["name"], "busybox");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    let exists = cli.fails(&["create", "namespace", "team"]).await;
    assert_eq!(
        exists.stderr,
        "Error from server (AlreadyExists): namespaces \"team\" already exists\n"
    );

    // expose as a NodePort Service: the server allocates a cluster IP and a node port.
    assert_eq!(
        cli.ok(&[
            "expose",
            "deployment",
            "api",
            "-n",
            "team",
            "--port=80",
            "--target-port=8080",
            "--type=NodePort"
        ])
        .await,
        "service/api exposed\n"
    );
    let svc = cli.json(&["get", "svc", "api", "-n", "team"]).await;
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["spec"]["selector"], serde_json::json!({"app": "api"}));
    let ip = svc["spec"]["clusterIP"].as_str().unwrap_or("");
    assert!(ip.starts_with("10."), "cluster IP {ip:?}");
    let port = &svc["spec"]["ports"][0];
    assert_eq!(port["port"], 80);
    assert_eq!(port["targetPort"], 8080);
    let node_port = port["nodePort"].as_i64().unwrap_or(0);
    assert!((30000..=32767).contains(&node_port), "{svc}");
    let table = cli.ok(&["get", "service", "api", "-n", "team"]).await;
    assert!(table.contains(&format!("80:{node_port}/TCP")), "{table}");

    // scale through the scale subresource, with and without a precondition.
    assert_eq!(
        cli.ok(&["scale", "deployment/api", "-n", "team", "--replicas=4"])
            .await,
        "deployment.apps/api scaled\n"
    );
    assert_eq!(
        cli.json(&["get", "deploy", "api", "-n", "team"]).await["spec"]["replicas"],
        4
    );
    let refused = cli
        .fails(&[
            "scale",
            "deploy",
            "api",
            "-n",
            "team",
            "--replicas=1",
            "--current-replicas=2",
        ])
        .await;
    assert_eq!(refused.stderr, "error: Expected replicas to be 2, was 4\n");

    // get -w prints the current rows, then rows as events arrive.
    let mut watch = tokio::process::Command::new(find_binary().unwrap())
        .args(["get", "cm", "-n", "team", "-w"])
        .env("KUBECONFIG", &cli.kubeconfig)
        .current_dir(&cli.cwd)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next = async || {
        tokio::time::timeout(CONVERGE, lines.next_line())
            .await
            .expect("a line from get -w")
            .unwrap()
            .expect("get -w still running")
    };
    let header = next().await;
    assert!(header.starts_with("NAME "), "{header}");
    let data_column = header.find("DATA").unwrap();
    loop {
        let line = next().await;
        if line.starts_with("settings ") {
            assert_eq!(
                &line[data_column..data_column + 2],
                "2 ",
                "{header}\n{line}"
            );
            break;
        }
    }
    cli.ok(&[
        "create",
        "cm",
        "watched",
        "-n",
        "team",
        "--from-literal=x=y",
    ])
    .await;
    loop {
        let line = next().await;
        if line.starts_with("watched ") {
            // Rows printed later stay aligned with the header.
            assert_eq!(
                &line[data_column..data_column + 2],
                "1 ",
                "{header}\n{line}"
            );
            break;
        }
    }
    watch.kill().await.unwrap();

    // delete waits until the objects are gone.
    assert_eq!(
        cli.ok(&["delete", "deployment", "api", "-n", "team"]).await,
        "deployment.apps \"api\" deleted\n"
    );
    let gone = cli.fails(&["get", "deploy", "api", "-n", "team"]).await;
    assert_eq!(
        gone.stderr,
        "Error from server (NotFound): deployments.apps \"api\" not found\n"
    );
    assert_eq!(
        cli.ok(&[
            "delete",
            "deployment/front",
            "cm/front-config",
            "-n",
            "shop"
        ])
        .await,
        "deployment.apps \"front\" deleted\nconfigmap \"front-config\" deleted\n"
    );
    let doomed = write(
        work.path(),
        "doomed.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n",
    );
    assert_eq!(
        cli.ok(&["delete", "-f", &doomed, "-n", "team"]).await,
        "configmap \"settings\" deleted\nsecret \"creds\" deleted\n"
    );
    assert_eq!(
        cli.ok(&["delete", "service", "api", "-n", "team"]).await,
        "service \"api\" deleted\n"
    );
    // A namespace is gone only once its finalizer emptied it; delete waits for that.
    assert_eq!(
        cli.ok(&["delete", "namespace", "shop"]).await,
        "namespace \"shop\" deleted\n"
    );
    let ns = cli.fails(&["get", "namespace", "shop"]).await;
    assert_eq!(
        ns.stderr,
        "Error from server (NotFound): namespaces \"shop\" not found\n"
    );

    // Errors read like kubectl's and exit with 1.
    let missing = cli
        .fails(&["get", "deployment", "nope", "-n", "team"])
        .await;
    assert_eq!(missing.stdout, "");
    assert_eq!(
        missing.stderr,
        "Error from server (NotFound): deployments.apps \"nope\" not found\n"
    );
    let unknown = cli.fails(&["get", "gizmos"]).await;
    assert_eq!(
        unknown.stderr,
        "error: the server doesn't have a resource type \"gizmos\"\n"
    );
    let bad = cli
        .run(&["apply", "-f", "-"], Some("kind: [unclosed\n"))
        .await;
    assert!(
        !bad.ok && bad.stderr.starts_with("error: error parsing STDIN"),
        "{}",
        bad.stderr
    );
    let no_logs = cli.fails(&["logs", "nope", "-n", "team"]).await;
    assert!(
        no_logs.stderr.contains("pods \"nope\" not found"),
        "{}",
        no_logs.stderr
    );

    // cluster-info names the context's server.
    let info = cli.ok(&["cluster-info"]).await;
    assert!(
        info.starts_with("Kubernetes control plane is running at https://127.0.0.1:"),
        "{info}"
    );

    cluster.stop().await.unwrap();
}
