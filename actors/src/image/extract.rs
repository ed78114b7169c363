//! Applies an image's layers, bottom to top, into one flattened root filesystem directory.
//!
//! Why flattened rather than one directory per layer with overlayfs whiteouts: it needs no root
//! (overlay whiteouts are 0/0 character devices and `trusted.*` xattrs), and the runtime gets a
//! single lowerdir. Whiteouts are applied while extracting: `.wh.<name>` deletes `<name>` from
//! the layers below, `.wh..wh..opq` empties its directory of what the layers below put there.
//!
//! Layers are untrusted: absolute paths and `..` are refused, and every parent path is resolved
//! inside the root (symlinks are followed as a chroot would), so nothing is written outside it.
//! Modes, symlinks and hardlinks are kept; ownership only when running as root. Device nodes and
//! FIFOs are skipped (the runtime provides `/dev`), as are xattrs.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use flate2::read::MultiGzDecoder;
use tar::EntryType;

use super::digest::HashReader;
use crate::runtime::{Result, RuntimeError};

const MAX_SYMLINK_HOPS: usize = 40;

/// How a blob is compressed, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
}

pub(crate) fn sniff<R: BufRead>(r: &mut R) -> Result<Compression> {
    let head = r.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Err(RuntimeError::Invalid(
            "zstd-compressed layers are not supported".into(),
        ))
    } else {
        Ok(Compression::None)
    }
}

/// A file opened for reading, decompressed if it is gzip.
pub(crate) fn open_maybe_gzip(path: &Path) -> Result<Box<dyn Read>> {
    let mut r = BufReader::with_capacity(256 * 1024, File::open(path)?);
    Ok(match sniff(&mut r)? {
        Compression::Gzip => Box::new(MultiGzDecoder::new(r)),
        Compression::None => Box::new(r),
    })
}

fn invalid(msg: impl Into<String>) -> RuntimeError {
    RuntimeError::Invalid(msg.into())
}

/// The normal components of an archive path; `Err` for absolute paths and `..`.
pub(crate) fn sanitize(path: &Path) -> Result<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(format!(
                    "absolute path in archive: {}",
                    path.display()
                )));
            }
            Component::ParentDir => {
                return Err(invalid(format!(
                    "path escapes the archive root: {}",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

/// Removes a tree, first making its directories writable (images have read-only ones).
pub(crate) fn force_remove(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    if fs::remove_dir_all(path).is_ok() {
        return Ok(());
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o700));
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Builds a flattened root filesystem from layers applied in order.
pub(crate) struct Extractor {
    root: PathBuf,
    /// Chown to the archive's owners (only root may).
    as_root: bool,
    /// Directory modes and mtimes, applied at the end so read-only directories can still be
    /// filled by the layers above.
    dirs: HashMap<PathBuf, (u32, u64)>,
    /// Bytes of regular files extracted (what `docker images` calls the size).
    pub(crate) size: u64,
}

impl Extractor {
    pub(crate) fn new(root: &Path, as_root: bool) -> Result<Extractor> {
        fs::create_dir_all(root)?;
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
        Ok(Extractor {
            root: root.to_path_buf(),
            as_root,
            dirs: HashMap::new(),
            size: 0,
        })
    }

    /// Applies the layer blob at `blob` (tar, or gzip'd tar) and checks the digest of its
    /// uncompressed stream against `diff_id`.
    pub(crate) fn apply_blob(&mut self, blob: &Path, diff_id: &str) -> Result<()> {
        let mut reader = HashReader::new(open_maybe_gzip(blob)?);
        self.apply_layer(&mut reader)
            .map_err(|e| invalid(format!("layer {diff_id}: {e}")))?;
        let got = reader
            .drain_and_finish()
            .map_err(|e| invalid(format!("layer {diff_id}: {e}")))?;
        if got != diff_id {
            return Err(invalid(format!(
                "layer content does not match its diff id: expected {diff_id}, got {got}"
            )));
        }
        Ok(())
    }

    /// Applies one uncompressed layer tar stream.
    pub(crate) fn apply_layer<R: Read>(&mut self, reader: R) -> Result<()> {
        let mut archive = tar::Archive::new(reader);
        // Real paths (relative to the root) this layer wrote, with their ancestors: what an
        // opaque marker must keep.
        let mut written: HashSet<PathBuf> = HashSet::new();
        let mut opaque: Vec<PathBuf> = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let rel = sanitize(&entry.path()?)?;
            let Some(name) = rel.file_name().map(OsStr::to_os_string) else {
                continue; // the root itself ("./")
            };
            let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
            let name_bytes = name.as_bytes();
            if let Some(hidden) = name_bytes.strip_prefix(b".wh.") {
                if hidden == b".wh..opq" {
                    if let Some(dir) = self.resolve_dir(&parent_rel, false)? {
                        opaque.push(dir);
                    }
                } else if !hidden.starts_with(b".wh.") {
                    let hidden = OsStr::from_bytes(hidden);
                    if hidden.is_empty() || hidden == "." || hidden == ".." {
                        return Err(invalid(format!("bad whiteout {}", rel.display())));
                    }
                    if let Some(dir) = self.resolve_dir(&parent_rel, false)? {
                        let target = dir.join(hidden);
                        let target_rel = self.relative(&target);
                        // A whiteout hides lower layers only, never this layer's own files.
                        if !written.contains(&target_rel) {
                            force_remove(&target)?;
                        }
                    }
                }
                // Other `.wh..wh.*` entries are aufs bookkeeping.
                continue;
            }
            let Some(dir) = self.resolve_dir(&parent_rel, true)? else {
                return Err(invalid(format!(
                    "cannot create parent of {}",
                    rel.display()
                )));
            };
            let dst = dir.join(&name);
            let dst_rel = self.relative(&dst);
            let kind = entry.header().entry_type();
            let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
            let uid = entry
                .header()
                .uid()
                .ok()
                .and_then(|u| u32::try_from(u).ok());
            let gid = entry
                .header()
                .gid()
                .ok()
                .and_then(|g| u32::try_from(g).ok());
            let mtime = entry.header().mtime().unwrap_or(0);
            match kind {
                EntryType::Directory => {
                    match fs::symlink_metadata(&dst) {
                        Ok(m) if m.is_dir() => {}
                        Ok(_) => {
                            force_remove(&dst)?;
                            fs::create_dir(&dst)?;
                        }
                        Err(_) => fs::create_dir(&dst)?,
                    }
                    fs::set_permissions(&dst, fs::Permissions::from_mode(0o755))?;
                    self.chown(&dst, uid, gid)?;
                    self.dirs.insert(dst_rel.clone(), (mode, mtime));
                }
                EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                    force_remove(&dst)?;
                    let mut file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&dst)?;
                    self.size += io::copy(&mut entry, &mut file)?;
                    // chown before chmod: chown clears setuid bits.
                    self.chown(&dst, uid, gid)?;
                    file.set_permissions(fs::Permissions::from_mode(mode))?;
                    let _ = file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime));
                }
                EntryType::Symlink => {
                    let Some(target) = entry.link_name()? else {
                        return Err(invalid(format!("symlink {} has no target", rel.display())));
                    };
                    force_remove(&dst)?;
                    // The target is stored as is: it is only ever followed inside the root.
                    std::os::unix::fs::symlink(&target, &dst)?;
                    self.chown(&dst, uid, gid)?;
                }
                EntryType::Link => {
                    let Some(target) = entry.link_name()? else {
                        return Err(invalid(format!("hardlink {} has no target", rel.display())));
                    };
                    let target_rel = sanitize(&target)?;
                    let src = match (target_rel.parent(), target_rel.file_name()) {
                        (Some(p), Some(n)) => self.resolve_dir(p, false)?.map(|d| d.join(n)),
                        _ => None,
                    };
                    let src = src.filter(|s| fs::symlink_metadata(s).is_ok_and(|m| !m.is_dir()));
                    let Some(src) = src else {
                        return Err(invalid(format!(
                            "hardlink {} to missing {}",
                            rel.display(),
                            target.display()
                        )));
                    };
                    if src != dst {
                        force_remove(&dst)?;
                        fs::hard_link(&src, &dst)?;
                    }
                }
                EntryType::Char | EntryType::Block | EntryType::Fifo => {
                    tracing::debug!(path = %rel.display(), "skipping device node or fifo");
                    continue;
                }
                _ => continue, // pax/GNU headers are consumed by the tar reader
            }
            let mut p = dst_rel.as_path();
            while written.insert(p.to_path_buf()) {
                match p.parent() {
                    Some(parent) if !parent.as_os_str().is_empty() => p = parent,
                    _ => break,
                }
            }
        }
        for dir in opaque {
            self.make_opaque(&dir, &written)?;
        }
        Ok(())
    }

    /// Empties `dir` of everything this layer did not write.
    fn make_opaque(&self, dir: &Path, written: &HashSet<PathBuf>) -> Result<()> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d)? {
                let e = e?;
                let path = e.path();
                if !written.contains(&self.relative(&path)) {
                    force_remove(&path)?;
                } else if e.file_type()?.is_dir() {
                    stack.push(path);
                }
            }
        }
        Ok(())
    }

    /// Sets the directory modes and mtimes recorded along the way; deepest first, so a
    /// directory without search permission does not block its children.
    pub(crate) fn finish(self) -> Result<u64> {
        let mut dirs: Vec<_> = self.dirs.into_iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, (mode, mtime)) in dirs {
            let path = self.root.join(&rel);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                _ => continue, // removed by a later whiteout
            }
            if let Ok(f) = File::open(&path) {
                let _ = f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime));
            }
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
        Ok(self.size)
    }

    fn relative(&self, path: &Path) -> PathBuf {
        path.strip_prefix(&self.root).unwrap_or(path).to_path_buf()
    }

    fn chown(&self, path: &Path, uid: Option<u32>, gid: Option<u32>) -> Result<()> {
        if self.as_root {
            std::os::unix::fs::lchown(path, uid, gid)?;
        }
        Ok(())
    }

    /// Resolves `rel` to a real directory inside the root, following symlinks as if the root
    /// were `/`. With `create`, missing directories are made (and non-directories in the way
    /// replaced, as a layer that puts files under a former file does); without it, `None` when
    /// a component is missing.
    fn resolve_dir(&self, rel: &Path, create: bool) -> Result<Option<PathBuf>> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut pending: Vec<OsString> = rel
            .components()
            .rev()
            .filter_map(|c| match c {
                Component::Normal(n) => Some(n.to_os_string()),
                _ => None,
            })
            .collect();
        let mut hops = 0;
        while let Some(name) = pending.pop() {
            if name == ".." {
                resolved.pop(); // clamped at the root, like `/..`
                continue;
            }
            if name == "." || name.is_empty() {
                continue;
            }
            let mut cur = self.root.clone();
            cur.extend(&resolved);
            cur.push(&name);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => resolved.push(name),
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(invalid(format!(
                            "too many symlinks under {}",
                            rel.display()
                        )));
                    }
                    let target = fs::read_link(&cur)?;
                    if target.is_absolute() {
                        resolved.clear();
                    }
                    for c in target.components().rev() {
                        match c {
                            Component::Normal(n) => pending.push(n.to_os_string()),
                            Component::ParentDir => pending.push("..".into()),
                            _ => {}
                        }
                    }
                }
                Ok(_) if create => {
                    fs::remove_file(&cur)?;
                    fs::create_dir(&cur)?;
                    resolved.push(name);
                }
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    fs::create_dir(&cur)?;
                    resolved.push(name);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
        let mut out = self.root.clone();
        out.extend(&resolved);
        Ok(Some(out))
    }
}
