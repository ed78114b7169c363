//! `create namespace|configmap|secret generic|deployment`, `expose` and `scale`.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use clap::Subcommand;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::get;
use super::{Globals, Kube, Reported, ResourceInfo, report};

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    g: Globals,
    #[command(subcommand)]
    what: CreateWhat,
}

#[derive(Subcommand, Debug)]
enum CreateWhat {
    /// Create a namespace.
    #[command(visible_alias = "ns")]
    Namespace { name: String },
    /// Create a config map from literal values or files.
    #[command(visible_alias = "cm")]
    Configmap {
        name: String,
        /// KEY=VALUE (repeatable).
        #[arg(long)]
        from_literal: Vec<String>,
        /// [KEY=]PATH: a file's content under its base name or KEY (repeatable).
        #[arg(long)]
        from_file: Vec<String>,
    },
    /// Create a secret.
    Secret {
        #[command(subcommand)]
        kind: SecretKind,
    },
    /// Create a deployment running the given images.
    #[command(visible_alias = "deploy")]
    Deployment {
        name: String,
        /// Container image (repeatable: one container each).
        #[arg(long, required = true)]
        image: Vec<String>,
        /// Number of replicas.
        #[arg(long, short = 'r', default_value_t = 1)]
        replicas: i32,
        /// The port the first container exposes.
        #[arg(long)]
        port: Option<i32>,
    },
}

#[derive(Subcommand, Debug)]
enum SecretKind {
    /// Create an Opaque secret from literal values or files.
    Generic {
        name: String,
        /// KEY=VALUE (repeatable).
        #[arg(long)]
        from_literal: Vec<String>,
        /// [KEY=]PATH: a file's content under its base name or KEY (repeatable).
        #[arg(long)]
        from_file: Vec<String>,
        /// The secret's type.
        #[arg(long = "type", default_value = "Opaque")]
        type_: String,
    },
}

/// Keys and byte values of `--from-literal` and `--from-file`, checked like kubectl does.
fn key_values(
    literals: &[String],
    files: &[String],
    what: &str,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut add = |key: String, value: Vec<u8>| -> anyhow::Result<()> {
        let valid = !key.is_empty()
            && key.len() <= 253
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            bail!(
                "\"{key}\" is not a valid key name for a {what}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
            );
        }
        if out.contains_key(&key) {
            bail!("cannot add key {key}, another key by that name already exists");
        }
        out.insert(key, value);
        Ok(())
    };
    for l in literals {
        let Some((k, v)) = l.split_once('=') else {
            bail!("invalid literal source {l}, expected key=value");
        };
        add(k.to_owned(), v.as_bytes().to_vec())?;
    }
    for f in files {
        let (key, path) = match f.split_once('=') {
            Some((k, p)) => (k.to_owned(), p),
            None => (
                std::path::Path::new(f)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or("")
                    .to_owned(),
                f.as_str(),
            ),
        };
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        add(key, bytes)?;
    }
    Ok(out)
}

/// POSTs an object; returns the created object.
async fn create_object(
    kube: &Kube,
    r: &ResourceInfo,
    ns: Option<&str>,
    obj: &Value,
    manager: &str,
) -> anyhow::Result<Value> {
    let params = PostParams {
        field_manager: Some(manager.to_owned()),
        ..PostParams::default()
    };
    let req = kube::core::Request::new(r.collection_path(ns))
        .create(&params, serde_json::to_vec(obj)?)
        .map_err(kube::Error::BuildRequest)?;
    Ok(kube.client.request::<Value>(req).await?)
}

/// kubectl's container name for an image: its last path part without tag or digest.
fn container_name(image: &str, taken: &[String]) -> String {
    let base = image.rsplit('/').next().unwrap_or(image);
    let base = base.split(['@', ':']).next().unwrap_or(base);
    let base: String = base
        .chars()
        .map(|c| {
            if c == '_' || c == '.' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect();
    let base = if base.is_empty() {
        "container".to_owned()
    } else {
        base
    };
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// The Deployment `create deployment` makes.
fn deployment(name: &str, images: &[String], replicas: i32, port: Option<i32>) -> Value {
    let mut names: Vec<String> = Vec::new();
    let mut containers = Vec::new();
    for (i, image) in images.iter().enumerate() {
        let cname = container_name(image, &names);
        names.push(cname.clone());
        let mut c = json!({"name": cname, "image": image});
        if i == 0
            && let Some(p) = port
        {
            c["ports"] = json!([{"containerPort": p}]);
        }
        containers.push(c);
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": containers},
            },
        },
    })
}

/// Base64 as Kubernetes stores Secret data.
fn base64(bytes: &[u8]) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(bytes.to_vec())).unwrap_or(Value::Null)
}

pub async fn create(a: CreateArgs) -> anyhow::Result<()> {
    let kube = Kube::connect(&a.g).await?;
    let (ty, obj) = match &a.what {
        CreateWhat::Namespace { name } => (
            "namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        ),
        CreateWhat::Configmap {
            name,
            from_literal,
            from_file,
        } => {
            let mut data = serde_json::Map::new();
            let mut binary = serde_json::Map::new();
            for (k, v) in key_values(from_literal, from_file, "ConfigMap")? {
                match String::from_utf8(v) {
                    Ok(s) => data.insert(k, Value::String(s)),
                    Err(e) => binary.insert(k, base64(e.as_bytes())),
                };
            }
            let mut cm =
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}});
            if !data.is_empty() {
                cm["data"] = Value::Object(data);
            }
            if !binary.is_empty() {
                cm["binaryData"] = Value::Object(binary);
            }
            ("configmaps", cm)
        }
        CreateWhat::Secret {
            kind:
                SecretKind::Generic {
                    name,
                    from_literal,
                    from_file,
                    type_,
                },
        } => {
            let data: serde_json::Map<String, Value> =
                key_values(from_literal, from_file, "Secret")?
                    .into_iter()
                    .map(|(k, v)| (k, base64(&v)))
                    .collect();
            let mut s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": type_});
            if !data.is_empty() {
                s["data"] = Value::Object(data);
            }
            ("secrets", s)
        }
        CreateWhat::Deployment {
            name,
            image,
            replicas,
            port,
        } => {
            if *replicas < 0 {
                bail!("--replicas must be greater than or equal to 0");
            }
            (
                "deployments.apps",
                deployment(name, image, *replicas, *port),
            )
        }
    };
    let r = kube.resolve(ty).await?;
    let created = create_object(&kube, &r, kube.ns_for(&r), &obj, "flotilla-create").await?;
    println!("{} created", r.object_name(get::name_of(&created)));
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ExposeArgs {
    #[command(flatten)]
    g: Globals,
    /// TYPE NAME or TYPE/NAME: a deployment, replica set, replication controller, pod or
    /// service.
    args: Vec<String>,
    /// The port the Service serves on (default: the ports the pods expose).
    #[arg(long)]
    port: Option<i32>,
    /// The container port (number or name) traffic goes to (default: --port).
    #[arg(long)]
    target_port: Option<String>,
    /// The Service type.
    #[arg(long = "type", value_parser = ["ClusterIP", "NodePort", "LoadBalancer"])]
    type_: Option<String>,
    /// The Service's name (default: the exposed object's).
    #[arg(long)]
    name: Option<String>,
    /// The ports' protocol.
    #[arg(long, default_value = "TCP", value_parser = ["TCP", "UDP", "SCTP"])]
    protocol: String,
}

/// The pod selector of an exposable object.
fn selector_of(r: &ResourceInfo, o: &Value) -> anyhow::Result<serde_json::Map<String, Value>> {
    let sel = match (r.group.as_str(), r.plural.as_str()) {
        ("apps", "deployments" | "replicasets" | "statefulsets") => {
            if o.pointer("/spec/selector/matchExpressions")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty())
            {
                bail!(
                    "couldn't retrieve selectors via --selector flag or introspection: the {} uses matchExpressions, which a Service selector cannot express",
                    r.singular
                );
            }
            o.pointer("/spec/selector/matchLabels")
        }
        ("", "replicationcontrollers" | "services") => o.pointer("/spec/selector"),
        ("", "pods") => o.pointer("/metadata/labels"),
        _ => bail!("cannot expose a {}", r.kind),
    };
    match sel.and_then(Value::as_object) {
        Some(m) if !m.is_empty() => Ok(m.clone()),
        _ => bail!("couldn't retrieve selectors via --selector flag or introspection"),
    }
}

/// The ports the object's pods expose (or a Service's ports).
fn ports_of(r: &ResourceInfo, o: &Value) -> Vec<i64> {
    let containers = if r.plural == "pods" {
        o.pointer("/spec/containers")
    } else if r.plural == "services" {
        return o
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| p.get("port").and_then(Value::as_i64))
                    .collect()
            })
            .unwrap_or_default();
    } else {
        o.pointer("/spec/template/spec/containers")
    };
    let mut out = Vec::new();
    for c in containers.and_then(Value::as_array).into_iter().flatten() {
        for p in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(n) = p.get("containerPort").and_then(Value::as_i64)
                && !out.contains(&n)
            {
                out.push(n);
            }
        }
    }
    out
}

pub async fn expose(a: ExposeArgs) -> anyhow::Result<()> {
    let (ty, name) = super::one_object(&a.args, "expose")?;
    let kube = Kube::connect(&a.g).await?;
    let r = kube.resolve(&ty).await?;
    let o = get::get_one(&kube, &r, kube.ns_for(&r), &name, false).await?;
    let selector = selector_of(&r, &o)?;
    let ports: Vec<i64> = match a.port {
        Some(p) => vec![i64::from(p)],
        None => ports_of(&r, &o),
    };
    if ports.is_empty() {
        bail!("couldn't find port via --port flag or introspection");
    }
    let target: Option<Value> = a.target_port.as_deref().map(|t| match t.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(t),
    });
    let service_ports: Vec<Value> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut sp = json!({
                "port": p,
                "protocol": a.protocol,
                "targetPort": target.clone().unwrap_or(json!(p)),
            });
            if ports.len() > 1 {
                sp["name"] = json!(format!("port-{}", i + 1));
            }
            sp
        })
        .collect();
    let svc_name = a.name.clone().unwrap_or(name);
    let mut svc = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": svc_name},
        "spec": {
            "ports": service_ports,
            "selector": selector,
            "type": a.type_.as_deref().unwrap_or("ClusterIP"),
        },
    });
    if let Some(labels) = o
        .pointer("/metadata/labels")
        .filter(|l| l.as_object().is_some_and(|m| !m.is_empty()))
    {
        svc["metadata"]["labels"] = labels.clone();
    }
    let services = kube.resolve("services").await?;
    let created = create_object(
        &kube,
        &services,
        kube.ns_for(&services),
        &svc,
        "flotilla-expose",
    )
    .await?;
    println!("{} exposed", services.object_name(get::name_of(&created)));
    Ok(())
}

#[derive(clap::Args, Debug)]
pub struct ScaleArgs {
    #[command(flatten)]
    g: Globals,
    /// TYPE/NAME... or TYPE NAME...
    args: Vec<String>,
    /// The new number of replicas.
    #[arg(long, required = true, allow_negative_numbers = true)]
    replicas: i32,
    /// Only scale if the current number of replicas is this (a precondition).
    #[arg(long)]
    current_replicas: Option<i32>,
}

pub async fn scale(a: ScaleArgs) -> anyhow::Result<()> {
    if a.replicas < 0 {
        bail!(
            "The --replicas=COUNT flag is required, and COUNT must be greater than or equal to 0"
        );
    }
    if a.args.is_empty() {
        bail!("You must provide one or more resources by argument or filename.");
    }
    let kube = Kube::connect(&a.g).await?;
    let mut failed = false;
    for (r, names) in get::targets(&kube, &a.args).await? {
        if names.is_empty() {
            bail!("resource(s) were provided, but no name was specified");
        }
        let api: Api<DynamicObject> = match kube.ns_for(&r) {
            Some(ns) => Api::namespaced_with(kube.client.clone(), ns, &r.api_resource()),
            None => Api::all_with(kube.client.clone(), &r.api_resource()),
        };
        for name in names {
            let result = async {
                if let Some(want) = a.current_replicas {
                    let current = api.get_scale(&name).await?;
                    let have = current.spec.and_then(|s| s.replicas).unwrap_or(0);
                    if have != want {
                        bail!("Expected replicas to be {want}, was {have}");
                    }
                }
                api.patch_scale(
                    &name,
                    &PatchParams {
                        field_manager: Some("flotilla-scale".into()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(json!({"spec": {"replicas": a.replicas}})),
                )
                .await?;
                anyhow::Ok(())
            }
            .await;
            match result {
                Ok(()) => println!("{} scaled", r.object_name(&name)),
                Err(e) => {
                    failed = true;
                    report(&e);
                }
            }
        }
    }
    if failed {
        return Err(Reported.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deployments_look_like_kubectls() {
        let d = deployment(
            "web",
            &[
                "docker.io/library/nginx:1.27".into(),
                "my_side.car@sha256:ab".into(),
            ],
            2,
            Some(80),
        );
        assert_eq!(d["metadata"]["labels"]["app"], "web");
        assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
        assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "web");
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["name"], "nginx");
        assert_eq!(c[0]["ports"][0]["containerPort"], 80);
        assert_eq!(c[1]["name"], "my-side-car");
        assert!(c[1].get("ports").is_none());
        assert_eq!(container_name("nginx", &["nginx".into()]), "nginx-2");
    }

    #[test]
    fn literals() {
        let kv = key_values(&["a=1".into(), "b=x=y".into()], &[], "ConfigMap").unwrap();
        assert_eq!(kv["b"], b"x=y");
        assert!(key_values(&["a".into()], &[], "ConfigMap").is_err());
        assert!(key_values(&["a=1".into(), "a=2".into()], &[], "ConfigMap").is_err());
        assert!(key_values(&["a/b=1".into()], &[], "ConfigMap").is_err());
        assert_eq!(base64(b"hello"), json!("aGVsbG8="));
    }
}
