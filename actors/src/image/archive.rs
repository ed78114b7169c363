//! Reading `docker save` tarballs and OCI image layout archives (either possibly gzip'd).
//!
//! `docker save` writes `manifest.json` last, so the archive cannot be applied in one pass:
//! every file is first spooled to disk (hashed on the way, never held in memory), then the
//! manifests are read and the images staged from the spooled files.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::digest::{Sha256, digest_hex, is_hex64, sha256_bytes};
use super::extract::{Compression, sanitize, sniff};
use super::oci::{self, Descriptor, DockerSaveItem, IndexJson, Kind, ManifestJson, Platform};
use super::reference::Reference;
use crate::runtime::{Result, RuntimeError};

/// Largest JSON document (manifest, index, config) read into memory.
pub(crate) const MAX_JSON: u64 = 8 << 20;
/// Most files an outer archive may hold.
const MAX_ENTRIES: usize = 100_000;

fn invalid(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Invalid(msg.into())
}

/// A file on disk with its verified digest.
#[derive(Debug, Clone)]
pub(crate) struct Blob {
    pub path: PathBuf,
    pub digest: String,
    pub size: u64,
}

/// An image ready to be installed: its blobs sit in the import's temporary directory.
#[derive(Debug)]
pub(crate) struct Staged {
    /// The manifest document as stored (synthesised for `docker save` archives).
    pub manifest: Vec<u8>,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// Normalised store keys.
    pub references: Vec<String>,
}

/// The files of an archive, spooled to disk.
pub(crate) struct Spool {
    files: HashMap<String, Blob>,
    links: HashMap<String, String>,
}

/// Reads a file of at most `MAX_JSON` bytes.
pub(crate) fn read_small(path: &Path) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    File::open(path)?.take(MAX_JSON + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_JSON {
        return Err(invalid(format!(
            "{} is too large for a JSON document",
            path.display()
        )));
    }
    Ok(buf)
}

fn path_key(p: &Path) -> Result<String> {
    let clean = sanitize(p)?;
    clean
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| invalid(format!("non-UTF-8 name in archive: {}", p.display())))
}

/// Spools every regular file of the archive at `path` into `dir`.
pub(crate) fn spool(path: &Path, dir: &Path) -> Result<Spool> {
    let file = File::open(path).map_err(|e| {
        RuntimeError::Io(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
    })?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let reader: Box<dyn Read> = match sniff(&mut reader)? {
        Compression::Gzip => Box::new(MultiGzDecoder::new(reader)),
        Compression::None => Box::new(reader),
    };
    fs::create_dir_all(dir)?;
    let mut spool = Spool {
        files: HashMap::new(),
        links: HashMap::new(),
    };
    let mut archive = tar::Archive::new(reader);
    let bad = |e: io::Error| {
        invalid(format!(
            "{}: not a readable tar archive: {e}",
            path.display()
        ))
    };
    for (n, entry) in archive.entries().map_err(bad)?.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(invalid("archive has too many entries"));
        }
        let mut entry = entry.map_err(bad)?;
        let key = path_key(&entry.path().map_err(bad)?)?;
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let dst = dir.join(format!("{n}"));
                let mut out = File::create(&dst)?;
                let mut hash = Sha256::new();
                let mut buf = vec![0u8; 128 * 1024];
                loop {
                    let k = entry.read(&mut buf).map_err(bad)?;
                    if k == 0 {
                        break;
                    }
                    hash.update(&buf[..k]);
                    out.write_all(&buf[..k])?;
                }
                let size = hash.len();
                let digest = hash.finish();
                // An OCI blob's name is its digest: a mismatch is a corrupt archive.
                if let Some(hex) = key.strip_prefix("blobs/sha256/")
                    && Some(hex) != digest_hex(&digest)
                {
                    return Err(invalid(format!(
                        "corrupt blob {key}: its content has digest {digest}"
                    )));
                }
                spool.files.insert(
                    key,
                    Blob {
                        path: dst,
                        digest,
                        size,
                    },
                );
            }
            // `docker save` links identical layers to one copy.
            tar::EntryType::Symlink => {
                if let Some(target) = entry.link_name().map_err(bad)? {
                    let base = Path::new(&key).parent().unwrap_or(Path::new(""));
                    if let Some(t) = lexical_join(base, &target) {
                        spool.links.insert(key, t);
                    }
                }
            }
            tar::EntryType::Link => {
                if let Some(target) = entry.link_name().map_err(bad)? {
                    spool.links.insert(key, path_key(&target)?);
                }
            }
            _ => {}
        }
    }
    Ok(spool)
}

/// `base/target` with `.` and `..` folded; `None` if it leaves the archive root.
fn lexical_join(base: &Path, target: &Path) -> Option<String> {
    let mut parts: Vec<String> = if target.is_absolute() {
        Vec::new()
    } else {
        base.iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    };
    for c in target.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n.to_str()?.to_owned()),
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            _ => {}
        }
    }
    Some(parts.join("/"))
}

impl Spool {
    /// The spooled file named `name`, following the archive's links.
    pub(crate) fn get(&self, name: &str) -> Option<&Blob> {
        let mut key = path_key(Path::new(name)).ok()?;
        for _ in 0..16 {
            if let Some(b) = self.files.get(&key) {
                return Some(b);
            }
            key = self.links.get(&key)?.clone();
        }
        None
    }

    fn need(&self, name: &str) -> Result<&Blob> {
        self.get(name)
            .ok_or_else(|| invalid(format!("archive is missing {name}")))
    }

    fn blob(&self, d: &Descriptor) -> Result<&Blob> {
        let hex = digest_hex(&d.digest)
            .ok_or_else(|| invalid(format!("unsupported digest {:?}", d.digest)))?;
        let b = self.need(&format!("blobs/sha256/{hex}"))?;
        if b.size != d.size {
            return Err(invalid(format!(
                "blob {} has {} bytes, its descriptor says {}",
                d.digest, b.size, d.size
            )));
        }
        Ok(b)
    }

    /// The images of the archive: `manifest.json` (docker save) when present, else the OCI
    /// layout's `index.json`.
    pub(crate) fn stage(&self, platform: &Platform) -> Result<Vec<Staged>> {
        if let Some(m) = self.get("manifest.json") {
            let items: Vec<DockerSaveItem> = serde_json::from_slice(&read_small(&m.path)?)
                .map_err(|e| invalid(format!("manifest.json: {e}")))?;
            return items.iter().map(|item| self.stage_docker(item)).collect();
        }
        if let Some(ix) = self.get("index.json") {
            let index: IndexJson = serde_json::from_slice(&read_small(&ix.path)?)
                .map_err(|e| invalid(format!("index.json: {e}")))?;
            let mut out = Vec::new();
            for d in &index.manifests {
                self.stage_oci(d, Vec::new(), platform, 0, &mut out)?;
            }
            if out.is_empty() {
                return Err(invalid(format!(
                    "the OCI layout has no image for {platform}"
                )));
            }
            return Ok(out);
        }
        Err(invalid(
            "neither a docker-save archive (manifest.json) nor an OCI image layout (index.json)",
        ))
    }

    fn stage_docker(&self, item: &DockerSaveItem) -> Result<Staged> {
        let config = self.need(&item.config)?.clone();
        // The config's file name carries its digest (`<hex>.json` or `blobs/sha256/<hex>`).
        let named = item
            .config
            .rsplit('/')
            .next()
            .map(|n| n.strip_suffix(".json").unwrap_or(n))
            .filter(|n| is_hex64(n));
        if let Some(hex) = named
            && Some(hex) != digest_hex(&config.digest)
        {
            return Err(invalid(format!(
                "corrupt config {}: its content has digest {}",
                item.config, config.digest
            )));
        }
        let layers: Vec<Blob> = item
            .layers
            .iter()
            .map(|l| self.need(l).cloned())
            .collect::<Result<_>>()?;
        let mut layer_descs = Vec::new();
        for l in &layers {
            let mut r = BufReader::new(File::open(&l.path)?);
            let media_type = match sniff(&mut r)? {
                Compression::Gzip => oci::MT_OCI_LAYER_GZIP,
                Compression::None => oci::MT_OCI_LAYER,
            };
            layer_descs.push(descriptor(media_type, l));
        }
        let manifest = ManifestJson {
            schema_version: 2,
            media_type: Some(oci::MT_OCI_MANIFEST.into()),
            config: descriptor(oci::MT_OCI_CONFIG, &config),
            layers: layer_descs,
        };
        let manifest =
            serde_json::to_vec(&manifest).map_err(|e| RuntimeError::Other(e.to_string()))?;
        let mut references = Vec::new();
        for tag in item.repo_tags.iter().flatten() {
            match Reference::parse(tag) {
                Ok(r) => references.push(r.store_key()),
                Err(e) => tracing::warn!("ignoring tag {tag:?}: {e}"),
            }
        }
        Ok(Staged {
            manifest,
            config,
            layers,
            references,
        })
    }

    fn stage_oci(
        &self,
        d: &Descriptor,
        inherited: Vec<String>,
        platform: &Platform,
        depth: usize,
        out: &mut Vec<Staged>,
    ) -> Result<()> {
        if depth > 4 {
            return Err(invalid("OCI indexes nested too deeply"));
        }
        if let Some(p) = &d.platform
            && !platform.matches(p)
        {
            return Ok(()); // another platform, or an attestation (unknown/unknown)
        }
        let refs = match refs_from_annotations(d) {
            r if r.is_empty() => inherited,
            r => r,
        };
        let blob = self.blob(d)?;
        let doc = read_small(&blob.path)?;
        match oci::kind_of(&doc, Some(d.media_type.as_str()).filter(|m| !m.is_empty()))
            .map_err(|e| invalid(format!("{}: {e}", d.digest)))?
        {
            Kind::Index => {
                let index: IndexJson = serde_json::from_slice(&doc)
                    .map_err(|e| invalid(format!("index {}: {e}", d.digest)))?;
                let Some(child) = oci::pick_platform(&index.manifests, platform) else {
                    return Err(invalid(format!(
                        "index {} has no image for {platform}",
                        d.digest
                    )));
                };
                self.stage_oci(child, refs, platform, depth + 1, out)
            }
            Kind::Manifest => {
                let m: ManifestJson = serde_json::from_slice(&doc)
                    .map_err(|e| invalid(format!("manifest {}: {e}", d.digest)))?;
                let config = self.blob(&m.config)?.clone();
                let layers = m
                    .layers
                    .iter()
                    .map(|l| self.blob(l).cloned())
                    .collect::<Result<_>>()?;
                out.push(Staged {
                    manifest: doc,
                    config,
                    layers,
                    references: refs,
                });
                Ok(())
            }
        }
    }
}

fn descriptor(media_type: &str, b: &Blob) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: b.digest.clone(),
        size: b.size,
        platform: None,
        annotations: Default::default(),
    }
}

/// The image names an OCI index entry carries: containerd's full name, or a ref name that is
/// a full reference (a bare tag names no repository, so it is not enough).
fn refs_from_annotations(d: &Descriptor) -> Vec<String> {
    let mut out = Vec::new();
    let full = d
        .annotations
        .get(oci::ANN_CONTAINERD_NAME)
        .cloned()
        .or_else(|| {
            d.annotations
                .get(oci::ANN_REF_NAME)
                .filter(|r| r.contains([':', '/', '@']))
                .cloned()
        });
    if let Some(name) = full {
        match Reference::parse(&name) {
            Ok(r) => out.push(r.store_key()),
            Err(e) => tracing::warn!("ignoring image name {name:?}: {e}"),
        }
    }
    out
}

/// A manifest document's digest.
pub(crate) fn manifest_digest(doc: &[u8]) -> String {
    sha256_bytes(doc)
}
