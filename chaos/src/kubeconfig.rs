//! Writing and reading the kubeconfig of a Flotilla cluster.
//!
//! One cluster entry per node, so `kubectl --context flotilla-<node>` talks to a chosen node;
//! the current context is the first node.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct KubeConfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    #[serde(rename = "current-context", default)]
    current_context: Option<String>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
struct Cluster {
    server: String,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: Context_,
}

#[derive(Debug, Deserialize)]
struct Context_ {
    cluster: String,
}

/// Renders a kubeconfig for nodes `(name, server_url)`; the first node is the current context.
/// With `ca` (the cluster CA's PEM file), `http://` servers are written as `https://` on the
/// same port, verified against that CA under the name every node certificate carries.
pub fn render(nodes: &[(String, String)], ca: Option<&Path>) -> String {
    let mut out = String::from("apiVersion: v1\nkind: Config\nclusters:\n");
    for (i, (name, server)) in nodes.iter().enumerate() {
        let cluster = if i == 0 {
            "flotilla".to_owned()
        } else {
            format!("flotilla-{name}")
        };
        match ca {
            Some(ca) => {
                let server = server.replacen("http://", "https://", 1);
                out.push_str(&format!(
                    "- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority: {}\n    tls-server-name: {}\n",
                    ca.display(),
                    flotilla_mesh::CLUSTER_SERVER_NAME,
                ));
            }
            None => out.push_str(&format!(
                "- name: {cluster}\n  cluster:\n    server: {server}\n"
            )),
        }
    }
    out.push_str("contexts:\n");
    for (i, (name, _)) in nodes.iter().enumerate() {
        let cluster = if i == 0 {
            "flotilla".to_owned()
        } else {
            format!("flotilla-{name}")
        };
        out.push_str(&format!(
            "- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: flotilla\n    namespace: default\n"
        ));
    }
    out.push_str("current-context: flotilla\nusers:\n- name: flotilla\n");
    // A client certificate: with HTTPS and no credentials, kubectl would prompt for a password.
    match ca.and_then(Path::parent) {
        Some(dir) => out.push_str(&format!(
            "  user:\n    client-certificate: {}\n    client-key: {}\n",
            dir.join("admin.pem").display(),
            dir.join("admin.key").display()
        )),
        None => out.push_str("  user: {}\n"),
    }
    out.push_str("preferences: {}\n");
    out
}

/// Server URLs in a kubeconfig: the current context's first, then every other cluster's.
pub fn servers(path: &Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: KubeConfig = serde_saphyr::from_str(&text)
        .with_context(|| format!("parsing kubeconfig {}", path.display()))?;
    let current_cluster = config
        .current_context
        .as_ref()
        .and_then(|c| config.contexts.iter().find(|x| &x.name == c))
        .map(|c| c.context.cluster.clone());
    let mut out: Vec<String> = Vec::new();
    if let Some(cc) = &current_cluster
        && let Some(c) = config.clusters.iter().find(|c| &c.name == cc)
    {
        out.push(c.cluster.server.clone());
    }
    for c in &config.clusters {
        if !out.contains(&c.cluster.server) {
            out.push(c.cluster.server.clone());
        }
    }
    Ok(out)
}

/// Where the CLI finds the cluster: `--server`, then `--kubeconfig`, then `KUBECONFIG`, then
/// `.flotilla/kubeconfig`.
pub fn resolve_servers(
    server: Option<&str>,
    kubeconfig: Option<&Path>,
) -> anyhow::Result<Vec<String>> {
    if let Some(s) = server {
        return Ok(vec![s.trim_end_matches('/').to_owned()]);
    }
    let path: PathBuf = match kubeconfig {
        Some(p) => p.to_owned(),
        None => match std::env::var_os("KUBECONFIG") {
            // KUBECONFIG may list several files; the first that exists wins.
            Some(v) => std::env::split_paths(&v)
                .find(|p| p.exists())
                .unwrap_or_else(|| PathBuf::from(".flotilla/kubeconfig")),
            None => PathBuf::from(".flotilla/kubeconfig"),
        },
    };
    if !path.exists() {
        anyhow::bail!(
            "no cluster found: {} does not exist (start one with `flotilla up`, or pass --server or --kubeconfig)",
            path.display()
        );
    }
    let servers = servers(&path)?;
    if servers.is_empty() {
        anyhow::bail!("kubeconfig {} names no cluster server", path.display());
    }
    // The API port answers plain HTTP next to HTTPS; the CLI's own calls (status, chaos)
    // use plain HTTP.
    Ok(servers
        .into_iter()
        .map(|s| s.trim_end_matches('/').replacen("https://", "http://", 1))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rendered_kubeconfig_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kubeconfig");
        let nodes = vec![
            ("node-1".to_owned(), "http://127.0.0.1:6443".to_owned()),
            ("node-2".to_owned(), "http://127.0.0.1:6444".to_owned()),
        ];
        std::fs::write(
            &path,
            super::render(&nodes, Some(std::path::Path::new("/tmp/ca.pem"))),
        )
        .unwrap();
        assert_eq!(
            super::servers(&path).unwrap(),
            vec!["https://127.0.0.1:6443", "https://127.0.0.1:6444"]
        );
    }
}
