//! The node's local image store (`DATA_DIR/images`), which the `process` runtime runs
//! containers from.
//!
//! Layout, content-addressed:
//! - `blobs/sha256/<hex>`: manifests, configs and layers as imported or pulled;
//! - `rootfs/<config-hex>/`: the image's layers flattened into one directory, whiteouts
//!   applied (see `extract.rs` for why flattened); the runtime uses it as its overlay lowerdir;
//! - `index.json`: normalised references (`docker.io/library/busybox:1.36`,
//!   `repo@sha256:…`) → manifest digest, and per manifest its config, layers and size;
//! - `tmp/`: imports in progress (renamed into place when complete); `lock`: serialises
//!   changes of `index.json` between processes (the node and `flotilla image`).
//!
//! An image's id is its config digest, as in Docker. Methods block on file I/O: call them from
//! `spawn_blocking` in async code (`pull` does so itself).

mod archive;
mod digest;
mod extract;
mod oci;
mod pull;
mod reference;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use oci::Platform;
pub use pull::PullOptions;
pub use reference::{Reference, normalize_reference};

use crate::runtime::{ImageInfo, Result, RuntimeError};
use archive::{Blob, Staged};
use digest::digest_hex;

/// The store's directory under a node's data directory.
pub const NODE_IMAGES_DIR: &str = "images";

/// How the container should run, from the image config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `NAME=value` lines.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    /// `SIGTERM` unless the image says otherwise.
    pub stop_signal: Option<String>,
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The config digest, `sha256:<hex>`.
    pub id: String,
    /// Normalised references (`docker.io/library/busybox:1.36`, `…@sha256:…`), sorted.
    pub references: Vec<String>,
    /// Manifest digests this image was imported or pulled as.
    pub manifest_digests: Vec<String>,
    /// The flattened root filesystem (read-only: containers write to an overlay upper dir).
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    /// Bytes of the files in its layers (what `docker images` shows).
    pub size_bytes: u64,
}

impl Image {
    /// Short id as `docker images` shows it (12 hex digits).
    pub fn short_id(&self) -> &str {
        let hex = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        &hex[..hex.len().min(12)]
    }

    /// Its tags as (familiar repository, tag) pairs, `docker images` style.
    pub fn repo_tags(&self) -> Vec<(String, String)> {
        self.references
            .iter()
            .filter_map(|r| Reference::parse(r).ok())
            .filter_map(|r| Some((r.familiar_repository(), r.tag?)))
            .collect()
    }
}

impl From<&Image> for ImageInfo {
    fn from(i: &Image) -> ImageInfo {
        ImageInfo {
            id: i.id.clone(),
            references: i.references.clone(),
            size_bytes: i.size_bytes,
        }
    }
}

/// What one import or pull added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedImage {
    pub id: String,
    pub manifest_digest: String,
    /// References now pointing at it (normalised).
    pub references: Vec<String>,
    pub size_bytes: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexFile {
    schema_version: u32,
    /// Normalised reference → manifest digest.
    references: BTreeMap<String, String>,
    /// Manifest digest → what it holds.
    manifests: BTreeMap<String, Record>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    config: String,
    layers: Vec<String>,
    size: u64,
    image_config: ImageConfig,
}

/// The store at one directory. Cheap to clone; every method reads the directory afresh, so
/// several processes may share it.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A directory under `tmp/` removed when dropped (a failed import leaves nothing behind).
struct TmpDir(PathBuf);

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = extract::force_remove(&self.0);
    }
}

impl ImageStore {
    /// Opens (creating) the store at `dir`, and clears imports abandoned a day ago or more.
    pub fn open(dir: &Path) -> Result<ImageStore> {
        for sub in ["blobs/sha256", "rootfs", "tmp"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let store = ImageStore {
            dir: dir.to_path_buf(),
        };
        let stale = SystemTime::now() - Duration::from_secs(24 * 3600);
        for e in fs::read_dir(dir.join("tmp"))?.flatten() {
            if e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < stale)
            {
                let _ = extract::force_remove(&e.path());
            }
        }
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports every image of a `docker save` tarball or OCI image layout archive (optionally
    /// gzip'd). Digests are verified; a failed import changes nothing.
    pub fn import(&self, path: &Path) -> Result<Vec<ImportedImage>> {
        let tmp = self.tmp_dir("import")?;
        let spool = archive::spool(path, &tmp.0.join("spool"))?;
        let staged = spool.stage(&Platform::host())?;
        let mut out = Vec::new();
        for s in staged {
            out.push(self.install(&tmp.0, s, &[])?);
        }
        Ok(out)
    }

    /// The image `reference` (normalised like Docker) or id (`sha256:<hex>`, or 12+ hex digits
    /// of it) names.
    pub fn resolve(&self, reference: &str) -> Option<Image> {
        let index = self.read_index_logged()?;
        let config = find(&index, reference)?.config;
        image_of(&self.dir, &index, &config)
    }

    /// Every image, sorted by id.
    pub fn list(&self) -> Vec<Image> {
        let Some(index) = self.read_index_logged() else {
            return Vec::new();
        };
        let configs: BTreeSet<&String> = index.manifests.values().map(|r| &r.config).collect();
        configs
            .into_iter()
            .filter_map(|c| image_of(&self.dir, &index, c))
            .collect()
    }

    /// Removes a reference; the image goes with its last reference, or at once when named by
    /// id or digest. Its rootfs and blobs no other image uses are deleted.
    pub fn remove(&self, reference_or_id: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let Some(found) = find(&index, reference_or_id) else {
            return Err(RuntimeError::NotFound(format!("image {reference_or_id}")));
        };
        if let Some(key) = &found.tag_key {
            index.references.remove(key);
            let still_named = index.references.values().any(|m| {
                index
                    .manifests
                    .get(m)
                    .is_some_and(|r| r.config == found.config)
            });
            if still_named {
                return self.write_index(&index);
            }
        }
        let doomed: Vec<String> = index
            .manifests
            .iter()
            .filter(|(_, r)| r.config == found.config)
            .map(|(m, _)| m.clone())
            .collect();
        let mut blobs: BTreeSet<String> = BTreeSet::new();
        for m in &doomed {
            if let Some(r) = index.manifests.remove(m) {
                blobs.insert(m.clone());
                blobs.insert(r.config.clone());
                blobs.extend(r.layers);
            }
        }
        index.references.retain(|_, m| !doomed.contains(m));
        for r in index.manifests.values() {
            blobs.remove(&r.config);
            for l in &r.layers {
                blobs.remove(l);
            }
        }
        for m in index.manifests.keys() {
            blobs.remove(m);
        }
        self.write_index(&index)?;
        if let Some(hex) = digest_hex(&found.config) {
            extract::force_remove(&self.dir.join("rootfs").join(hex))?;
        }
        for b in blobs {
            if let Some(hex) = digest_hex(&b) {
                let _ = fs::remove_file(self.dir.join("blobs/sha256").join(hex));
            }
        }
        Ok(())
    }

    /// Pulls `reference` from its registry (anonymous token auth), for this machine's platform.
    pub async fn pull(&self, reference: &str) -> Result<ImportedImage> {
        self.pull_with(reference, &PullOptions::default()).await
    }

    pub async fn pull_with(&self, reference: &str, options: &PullOptions) -> Result<ImportedImage> {
        pull::pull(self, reference, options).await
    }

    fn tmp_dir(&self, what: &str) -> Result<TmpDir> {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{what}-{}-{}-{nanos}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.dir.join("tmp").join(name);
        fs::create_dir(&path)?;
        Ok(TmpDir(path))
    }

    fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        digest_hex(digest).map(|hex| self.dir.join("blobs/sha256").join(hex))
    }

    /// Where a staged blob is now: in the store if an earlier image of the same import moved
    /// it there, else still spooled.
    fn locate(&self, b: &Blob) -> PathBuf {
        match self.blob_path(&b.digest) {
            Some(p) if p.exists() => p,
            _ => b.path.clone(),
        }
    }

    /// Extracts a staged image (unless its rootfs is already there), stores its blobs and files
    /// its references. `extra_refs` are added to the staged ones (a pull's digest references).
    fn install(&self, tmp: &Path, s: Staged, extra_refs: &[String]) -> Result<ImportedImage> {
        let invalid = |m: String| RuntimeError::Invalid(m);
        let config_doc = archive::read_small(&self.locate(&s.config))?;
        let config: oci::ConfigJson = serde_json::from_slice(&config_doc)
            .map_err(|e| invalid(format!("image config {}: {e}", s.config.digest)))?;
        let diff_ids = &config.rootfs.diff_ids;
        if diff_ids.len() != s.layers.len() {
            return Err(invalid(format!(
                "image {} lists {} diff ids for {} layers",
                s.config.digest,
                diff_ids.len(),
                s.layers.len()
            )));
        }
        let host = Platform::host();
        if (!config.os.is_empty() && config.os != host.os)
            || (!config.architecture.is_empty() && config.architecture != host.architecture)
        {
            tracing::warn!(
                image = %s.config.digest,
                "image is for {}/{}, this machine is {host}",
                config.os,
                config.architecture
            );
        }
        let id = s.config.digest.clone();
        let hex = digest_hex(&id).ok_or_else(|| invalid(format!("bad config digest {id}")))?;
        let rootfs = self.dir.join("rootfs").join(hex);
        let manifest_digest = archive::manifest_digest(&s.manifest);

        let existing_size = {
            let index = self.read_index()?;
            index
                .manifests
                .values()
                .find(|r| r.config == id)
                .map(|r| r.size)
                .filter(|_| rootfs.is_dir())
        };
        let mut extracted = None;
        let size = match existing_size {
            Some(size) => size,
            None => {
                let dir = tmp.join(format!("rootfs-{hex}"));
                let as_root = fs::metadata(tmp)?.uid() == 0;
                let mut ex = extract::Extractor::new(&dir, as_root)?;
                for (layer, diff_id) in s.layers.iter().zip(diff_ids) {
                    if digest_hex(diff_id).is_none() {
                        return Err(invalid(format!("bad diff id {diff_id:?}")));
                    }
                    ex.apply_blob(&self.locate(layer), diff_id)?;
                }
                let size = ex.finish()?;
                extracted = Some(dir);
                size
            }
        };

        for b in std::iter::once(&s.config).chain(&s.layers) {
            self.store_blob(b)?;
        }
        if let Some(p) = self.blob_path(&manifest_digest)
            && !p.exists()
        {
            write_atomic(&p, &s.manifest)?;
        }

        let image_config = {
            let c = config.config.unwrap_or_default();
            ImageConfig {
                entrypoint: c.entrypoint.unwrap_or_default(),
                cmd: c.cmd.unwrap_or_default(),
                env: c.env.unwrap_or_default(),
                working_dir: c.working_dir.filter(|w| !w.is_empty()),
                user: c.user.filter(|u| !u.is_empty()),
                stop_signal: c.stop_signal.filter(|s| !s.is_empty()),
            }
        };
        let _lock = self.lock()?;
        let mut index = self.read_index()?;
        let mut size = size;
        if let Some(dir) = extracted {
            let installed = index.manifests.values().find(|r| r.config == id);
            match installed {
                // Another import of the same image finished first: keep its rootfs, which
                // containers may already use (ours goes with the temporary directory).
                Some(r) if rootfs.is_dir() => size = r.size,
                _ => {
                    // An orphan (no record) from an interrupted import or removal.
                    extract::force_remove(&rootfs)?;
                    fs::rename(&dir, &rootfs)?;
                }
            }
        }
        index.manifests.insert(
            manifest_digest.clone(),
            Record {
                config: id.clone(),
                layers: s.layers.iter().map(|l| l.digest.clone()).collect(),
                size,
                image_config,
            },
        );
        let mut references: Vec<String> = s.references.clone();
        references.extend(extra_refs.iter().cloned());
        references.sort();
        references.dedup();
        for r in &references {
            index.references.insert(r.clone(), manifest_digest.clone());
        }
        self.write_index(&index)?;
        Ok(ImportedImage {
            id,
            manifest_digest,
            references,
            size_bytes: size,
        })
    }

    /// Moves a verified blob into `blobs/` (kept if already there: same digest, same bytes).
    fn store_blob(&self, b: &Blob) -> Result<()> {
        let Some(dst) = self.blob_path(&b.digest) else {
            return Err(RuntimeError::Invalid(format!("bad digest {}", b.digest)));
        };
        if !dst.exists() && b.path.exists() {
            fs::rename(&b.path, &dst)?;
        }
        Ok(())
    }

    fn lock(&self) -> io::Result<File> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))?;
        f.lock()?;
        Ok(f)
    }

    fn read_index(&self) -> Result<IndexFile> {
        match fs::read(self.dir.join("index.json")) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                RuntimeError::Other(format!("{}/index.json: {e}", self.dir.display()))
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(IndexFile {
                schema_version: 1,
                ..Default::default()
            }),
            Err(e) => Err(e.into()),
        }
    }

    fn read_index_logged(&self) -> Option<IndexFile> {
        self.read_index()
            .inspect_err(|e| tracing::warn!("image store: {e}"))
            .ok()
    }

    fn write_index(&self, index: &IndexFile) -> Result<()> {
        let bytes =
            serde_json::to_vec_pretty(index).map_err(|e| RuntimeError::Other(e.to_string()))?;
        write_atomic(&self.dir.join("index.json"), &bytes)?;
        Ok(())
    }
}

/// Writes through a temporary file and a rename, so readers never see half a file.
fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, path)
}

struct Found {
    config: String,
    /// The reference key when found by one (removing it untags rather than deletes).
    tag_key: Option<String>,
}

/// Looks `s` up: as a reference, then as a manifest digest, then as an id or id prefix.
fn find(index: &IndexFile, s: &str) -> Option<Found> {
    if let Ok(r) = Reference::parse(s) {
        let key = r.store_key();
        if let Some(m) = index.references.get(&key)
            && let Some(rec) = index.manifests.get(m)
        {
            return Some(Found {
                config: rec.config.clone(),
                tag_key: Some(key),
            });
        }
        // A digest pins content whatever repository it was imported under.
        if let Some(d) = &r.digest
            && let Some(rec) = index.manifests.get(d)
        {
            return Some(Found {
                config: rec.config.clone(),
                tag_key: None,
            });
        }
    }
    let hex = s.strip_prefix("sha256:").unwrap_or(s);
    if hex.len() < 12 || hex.len() > 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let hex = hex.to_ascii_lowercase();
    if let Some(rec) = index.manifests.get(&format!("sha256:{hex}")) {
        return Some(Found {
            config: rec.config.clone(),
            tag_key: None,
        });
    }
    let configs: BTreeSet<&String> = index
        .manifests
        .values()
        .map(|r| &r.config)
        .filter(|c| digest_hex(c).is_some_and(|h| h.starts_with(&hex)))
        .collect();
    match configs.into_iter().collect::<Vec<_>>()[..] {
        [one] => Some(Found {
            config: one.clone(),
            tag_key: None,
        }),
        _ => None, // none, or an ambiguous prefix
    }
}

fn image_of(dir: &Path, index: &IndexFile, config: &str) -> Option<Image> {
    let hex = digest_hex(config)?;
    let manifests: Vec<(&String, &Record)> = index
        .manifests
        .iter()
        .filter(|(_, r)| r.config == config)
        .collect();
    let (_, first) = manifests.first()?;
    let mut references: Vec<String> = index
        .references
        .iter()
        .filter(|(_, m)| manifests.iter().any(|(d, _)| d == m))
        .map(|(r, _)| r.clone())
        .collect();
    references.sort();
    Some(Image {
        id: config.to_owned(),
        references,
        manifest_digests: manifests.iter().map(|(d, _)| (*d).clone()).collect(),
        rootfs: dir.join("rootfs").join(hex),
        config: first.image_config.clone(),
        size_bytes: first.size,
    })
}

#[cfg(test)]
mod tests;
