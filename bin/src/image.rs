//! `flotilla image import|ls|rm|pull`: a node's local image store (`DATA_DIR/images`), which
//! the embedded runtime runs containers from. These work on the node's files directly, so run
//! them on the node's machine; on a local `flotilla up` cluster the nodes' data dirs are
//! `.flotilla/node-N`, and `--all-nodes` covers them all.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use flotilla_actors::image::{Image, ImageStore, NODE_IMAGES_DIR, PullOptions};

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Import the images of a `docker save` tarball or OCI image layout archive (maybe gzip'd).
    Import {
        file: PathBuf,
        #[command(flatten)]
        target: StoreTarget,
    },
    /// List images, like `docker images`.
    #[command(alias = "list")]
    Ls {
        #[command(flatten)]
        target: StoreTarget,
    },
    /// Remove a reference (the image goes with its last one), or an image by id.
    #[command(alias = "remove")]
    Rm {
        reference: String,
        #[command(flatten)]
        target: StoreTarget,
    },
    /// Pull an image from its registry (anonymous pulls only).
    Pull {
        reference: String,
        /// Registries (`host[:port]`) to reach over plain HTTP (loopback ones always are).
        #[arg(long = "plain-http", value_name = "HOST")]
        plain_http: Vec<String>,
        #[command(flatten)]
        target: StoreTarget,
    },
}

/// Which node's store.
#[derive(clap::Args)]
pub struct StoreTarget {
    /// The node's data directory (as given to `flotilla node --data-dir`); the store is
    /// DATA_DIR/images. On a local `flotilla up` cluster: .flotilla/node-N.
    #[arg(
        long,
        required_unless_present = "all_nodes",
        conflicts_with = "all_nodes"
    )]
    data_dir: Option<PathBuf>,
    /// Every node of a local `flotilla up` cluster: CLUSTER_DIR/node-* (default .flotilla).
    #[arg(long, value_name = "CLUSTER_DIR", num_args = 0..=1, default_missing_value = ".flotilla")]
    all_nodes: Option<PathBuf>,
}

impl StoreTarget {
    /// (node name, store) pairs.
    fn stores(&self) -> anyhow::Result<Vec<(String, ImageStore)>> {
        let dirs: Vec<PathBuf> = match (&self.data_dir, &self.all_nodes) {
            (Some(d), _) => vec![d.clone()],
            (None, Some(cluster)) => {
                let mut dirs: Vec<PathBuf> = std::fs::read_dir(cluster)
                    .with_context(|| format!("reading {}", cluster.display()))?
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("node-"))
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.path())
                    .collect();
                dirs.sort_by_key(|d| node_number(d));
                if dirs.is_empty() {
                    bail!("no node-* directories in {}", cluster.display());
                }
                dirs
            }
            (None, None) => bail!("give --data-dir or --all-nodes"),
        };
        dirs.iter()
            .map(|d| {
                let name = d
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| d.display().to_string());
                let store = ImageStore::open(&d.join(NODE_IMAGES_DIR))
                    .with_context(|| format!("opening the image store of {}", d.display()))?;
                Ok((name, store))
            })
            .collect()
    }

    fn many(&self) -> bool {
        self.data_dir.is_none()
    }
}

/// `node-10` after `node-9`.
fn node_number(d: &Path) -> (u64, String) {
    let name = d
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = name
        .strip_prefix("node-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX);
    (n, name)
}

pub async fn run(command: ImageCommand) -> anyhow::Result<()> {
    match command {
        ImageCommand::Import { file, target } => {
            for (node, store) in target.stores()? {
                let file = file.clone();
                let started = std::time::Instant::now();
                let imported = tokio::task::spawn_blocking(move || store.import(&file))
                    .await?
                    .with_context(|| format!("importing into {node}"))?;
                let prefix = if target.many() {
                    format!("{node}: ")
                } else {
                    String::new()
                };
                for i in imported {
                    let short = &i.id.trim_start_matches("sha256:")[..12];
                    if i.references.is_empty() {
                        println!("{prefix}Loaded image ID: {short}");
                    }
                    for r in &i.references {
                        println!("{prefix}Loaded image: {} ({short})", familiar(r));
                    }
                }
                tracing::debug!(elapsed = ?started.elapsed(), "imported");
            }
            Ok(())
        }
        ImageCommand::Ls { target } => {
            let many = target.many();
            let mut rows = Vec::new();
            for (node, store) in target.stores()? {
                let images = tokio::task::spawn_blocking(move || store.list()).await?;
                rows.extend(images.iter().flat_map(|i| rows_of(&node, i)));
            }
            print_table(&rows, many);
            Ok(())
        }
        ImageCommand::Rm { reference, target } => {
            for (node, store) in target.stores()? {
                let r = reference.clone();
                tokio::task::spawn_blocking(move || store.remove(&r))
                    .await?
                    .with_context(|| format!("{node}: removing {reference}"))?;
                let name = familiar(&reference);
                if target.many() {
                    println!("{node}: Untagged: {name}");
                } else {
                    println!("Untagged: {name}");
                }
            }
            Ok(())
        }
        ImageCommand::Pull {
            reference,
            plain_http,
            target,
        } => {
            let options = PullOptions {
                plain_http,
                ..PullOptions::default()
            };
            for (node, store) in target.stores()? {
                let i = store
                    .pull_with(&reference, &options)
                    .await
                    .with_context(|| format!("{node}: pulling {reference}"))?;
                println!("{}: Digest: {}", familiar(&reference), i.manifest_digest);
            }
            Ok(())
        }
    }
}

/// `docker.io/library/busybox:1.36` → `busybox:1.36`.
fn familiar(reference: &str) -> String {
    match flotilla_actors::image::Reference::parse(reference) {
        Ok(r) => {
            let mut s = r.familiar_repository();
            if let Some(t) = &r.tag {
                s = format!("{s}:{t}");
            }
            if let Some(d) = &r.digest {
                s = format!("{s}@{d}");
            }
            s
        }
        Err(_) => reference.to_owned(),
    }
}

struct Row {
    node: String,
    repository: String,
    tag: String,
    id: String,
    size: String,
}

fn rows_of(node: &str, i: &Image) -> Vec<Row> {
    let mut tags = i.repo_tags();
    if tags.is_empty() {
        tags.push(("<none>".into(), "<none>".into()));
    }
    tags.into_iter()
        .map(|(repository, tag)| Row {
            node: node.to_owned(),
            repository,
            tag,
            id: i.short_id().to_owned(),
            size: human_size(i.size_bytes),
        })
        .collect()
}

fn print_table(rows: &[Row], with_node: bool) {
    let width = |f: &dyn Fn(&Row) -> usize, title: &str| {
        rows.iter().map(f).max().unwrap_or(0).max(title.len())
    };
    let nw = width(&|r| r.node.len(), "NODE");
    let rw = width(&|r| r.repository.len(), "REPOSITORY");
    let tw = width(&|r| r.tag.len(), "TAG");
    let iw = width(&|r| r.id.len(), "IMAGE ID");
    let line = |node: &str, repo: &str, tag: &str, id: &str, size: &str| {
        let node = if with_node {
            format!("{node:<nw$}   ")
        } else {
            String::new()
        };
        println!("{node}{repo:<rw$}   {tag:<tw$}   {id:<iw$}   {size}");
    };
    line("NODE", "REPOSITORY", "TAG", "IMAGE ID", "SIZE");
    for r in rows {
        line(&r.node, &r.repository, &r.tag, &r.id, &r.size);
    }
}

/// Docker's sizes: decimal units, three significant digits (`4.86kB`, `1.98MB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 999.5 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else if v < 9.995 {
        format!("{v:.2}{}", UNITS[u])
    } else if v < 99.95 {
        format!("{v:.1}{}", UNITS[u])
    } else {
        format!("{v:.0}{}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4860), "4.86kB");
        assert_eq!(human_size(1_982_256), "1.98MB");
        assert_eq!(human_size(72_800_000), "72.8MB");
        assert_eq!(human_size(123_456_789), "123MB");
        assert_eq!(familiar("docker.io/library/busybox:1.36"), "busybox:1.36");
        assert_eq!(familiar("registry:5000/x/y:t"), "registry:5000/x/y:t");
    }
}
