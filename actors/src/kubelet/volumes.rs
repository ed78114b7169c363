//! Volume contents: which files a configMap, secret, downwardAPI or projected volume holds
//! (`items`, `defaultMode`, per-item `mode`, `optional`), written the way the kubelet's
//! atomic writer does so that running containers see updates whole; and memory-backed
//! emptyDirs.
//!
//! Layout of a volume directory, as in Kubernetes:
//!
//! ```text
//! ..2026_11_22_05_39_33.000123456/   the current files, with their modes
//! ..data -> ..2026_11_22_05_39_33.000123456
//! key    -> ..data/key                one symlink per top-level entry
//! ```
//!
//! An update writes a new timestamped directory, then renames a fresh `..data` symlink over
//! the old one (one atomic step), so a reader sees either the old set of files or the new,
//! never a mix. A subPath mount binds the file the symlink resolved to at mount time, so it
//! keeps the old content, as in Kubernetes.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use serde_json::Value;

/// Mode of files when neither the volume nor the item says (Kubernetes' 0644).
pub const DEFAULT_MODE: u32 = 0o644;
const DATA_LINK: &str = "..data";
const DATA_LINK_TMP: &str = "..data_tmp";

/// One file of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeFile {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Files by their path relative to the volume.
pub type Payload = BTreeMap<String, VolumeFile>;

/// `mode`/`defaultMode` as given (JSON numbers are decimal: 420 is 0644), checked.
pub fn mode_of(v: Option<&Value>, default: u32) -> Result<u32, String> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(m) => m
            .as_u64()
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| *m <= 0o777)
            .ok_or_else(|| format!("invalid file mode {m}: must be between 0 and 0777")),
    }
}

/// A file path inside a volume: relative, without `..`, not starting with `..` (those names
/// belong to the writer).
pub fn check_item_path(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && !path.starts_with("..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid item path {path:?}: must be relative and contain no '..'"
        ))
    }
}

/// The files of a configMap or secret source. `data` is None when the object does not
/// exist; `what` names it in errors (`configmap "app"`).
pub fn keyed_files(
    what: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
    source: &Value,
    default_mode: u32,
) -> Result<Payload, String> {
    let optional = source
        .get("optional")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let Some(data) = data else {
        return if optional {
            Ok(Payload::new())
        } else {
            Err(format!("{what} not found"))
        };
    };
    let mut out = Payload::new();
    match source.get("items").and_then(Value::as_array) {
        Some(items) if !items.is_empty() => {
            for item in items {
                let key = item.get("key").and_then(Value::as_str).unwrap_or("");
                let path = item.get("path").and_then(Value::as_str).unwrap_or(key);
                check_item_path(path)?;
                let mode = mode_of(item.get("mode"), default_mode)?;
                match data.get(key) {
                    Some(bytes) => {
                        out.insert(
                            path.to_owned(),
                            VolumeFile {
                                data: bytes.clone(),
                                mode,
                            },
                        );
                    }
                    None if optional => {}
                    None => return Err(format!("{what} has no key {key:?}")),
                }
            }
        }
        _ => {
            for (key, bytes) in data {
                check_item_path(key)?;
                out.insert(
                    key.clone(),
                    VolumeFile {
                        data: bytes.clone(),
                        mode: default_mode,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// The files of a downwardAPI source: each item's value comes from `value_of` (a fieldRef or
/// resourceFieldRef resolved by the caller).
pub fn downward_files(
    items: &[Value],
    default_mode: u32,
    mut value_of: impl FnMut(&Value) -> Result<String, String>,
) -> Result<Payload, String> {
    let mut out = Payload::new();
    for item in items {
        let path = item.get("path").and_then(Value::as_str).unwrap_or("");
        check_item_path(path)?;
        let mode = mode_of(item.get("mode"), default_mode)?;
        out.insert(
            path.to_owned(),
            VolumeFile {
                data: value_of(item)?.into_bytes(),
                mode,
            },
        );
    }
    Ok(out)
}

/// Makes `dir` hold exactly `payload`, atomically for readers (see the module docs). Returns
/// whether anything changed. Blocking: call from a blocking thread.
pub fn write_atomic(dir: &Path, payload: &Payload) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let data_link = dir.join(DATA_LINK);
    let old_target = std::fs::read_link(&data_link).ok();
    if let Some(old) = &old_target
        && read_tree(&dir.join(old))? == *payload
    {
        return Ok(false);
    }
    let stamp = {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        format!("..{}.{:09}", now.as_secs(), now.subsec_nanos())
    };
    let new_dir = dir.join(&stamp);
    std::fs::create_dir(&new_dir)?;
    std::fs::set_permissions(&new_dir, std::fs::Permissions::from_mode(0o755))?;
    for (path, file) in payload {
        let target = new_dir.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&target, &file.data)?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))?;
    }
    let tmp = dir.join(DATA_LINK_TMP);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, &data_link)?;
    // Top-level names point through `..data`, so they follow each swap.
    let top: BTreeSet<String> = payload
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    for name in &top {
        let link = dir.join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(m) if m.file_type().is_symlink() => continue,
            // A plain file or directory from an older layout.
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&link)?,
            Ok(_) => std::fs::remove_file(&link)?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(format!("{DATA_LINK}/{name}"), &link)?;
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if name.starts_with("..") {
            // Earlier generations, including any an interrupted write left behind.
            if is_dir && name != stamp {
                let _ = std::fs::remove_dir_all(entry.path());
            }
            continue;
        }
        if top.contains(&name) {
            continue;
        }
        let path = entry.path();
        if is_dir {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(true)
}

/// The files under `root` with their modes (what `write_atomic` wrote last).
fn read_tree(root: &Path) -> io::Result<Payload> {
    let mut out = Payload::new();
    let mut pending = vec![root.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(root)
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default();
            out.insert(
                rel,
                VolumeFile {
                    data: std::fs::read(entry.path())?,
                    mode: meta.permissions().mode() & 0o777,
                },
            );
        }
    }
    Ok(out)
}

/// Whether `dir` is a mount point (on another device than its parent).
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let (Ok(me), Some(Ok(parent))) = (std::fs::metadata(dir), dir.parent().map(std::fs::metadata))
    else {
        return false;
    };
    me.dev() != parent.dev()
}

/// An emptyDir with `medium: Memory`: a tmpfs of `size_bytes` (the kernel's default, half
/// the RAM, when None) when this process may mount, else a plain directory.
pub fn ensure_memory_dir(dir: &Path, size_bytes: Option<u64>) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    if !nix::unistd::geteuid().is_root() || is_mount_point(dir) {
        return Ok(());
    }
    let mut options = "mode=0777".to_owned();
    if let Some(size) = size_bytes {
        options.push_str(&format!(",size={size}"));
    }
    nix::mount::mount(
        Some("tmpfs"),
        dir,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
        Some(options.as_str()),
    )
    .map_err(io::Error::other)
}

/// Unmounts memory-backed volumes under `volumes_dir` so the pod directory can be removed.
pub fn unmount_all(volumes_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(volumes_dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if is_mount_point(&path)
            && let Err(err) = nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH)
        {
            tracing::warn!(path = %path.display(), error = %err, "unmounting a volume failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data() -> BTreeMap<String, Vec<u8>> {
        [("a", "1"), ("b", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn items_choose_keys_paths_and_modes() {
        let src = json!({"items": [{"key": "a", "path": "dir/first", "mode": 0o600}]});
        let files = keyed_files("configmap \"c\"", Some(&data()), &src, 0o440).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files["dir/first"].data, b"1");
        assert_eq!(files["dir/first"].mode, 0o600);
        // Without items every key is a file with the default mode.
        let all = keyed_files("configmap \"c\"", Some(&data()), &json!({}), 0o440).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), ["a", "b"]);
        assert!(all.values().all(|f| f.mode == 0o440));
    }

    #[test]
    fn missing_objects_and_keys_fail_unless_optional() {
        let missing = json!({"items": [{"key": "zz", "path": "z"}]});
        assert!(keyed_files("c", Some(&data()), &missing, DEFAULT_MODE).is_err());
        assert!(keyed_files("c", None, &json!({}), DEFAULT_MODE).is_err());
        let optional = json!({"optional": true, "items": [{"key": "zz", "path": "z"}]});
        assert!(
            keyed_files("c", Some(&data()), &optional, DEFAULT_MODE)
                .unwrap()
                .is_empty()
        );
        assert!(
            keyed_files("c", None, &optional, DEFAULT_MODE)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn paths_and_modes_are_checked() {
        assert!(check_item_path("a/b").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "..data"] {
            assert!(check_item_path(bad).is_err(), "{bad}");
        }
        assert_eq!(mode_of(Some(&json!(420)), 0).unwrap(), 0o644);
        assert_eq!(mode_of(None, 0o400).unwrap(), 0o400);
        assert!(mode_of(Some(&json!(0o1777)), 0).is_err());
        assert!(mode_of(Some(&json!("0644")), 0).is_err());
    }

    #[test]
    fn atomic_writes_swap_the_data_link_and_drop_stale_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = |s: &str, mode| VolumeFile {
            data: s.as_bytes().to_vec(),
            mode,
        };
        let first: Payload = [
            ("a".to_owned(), file("1", 0o600)),
            ("d/x".into(), file("x", 0o644)),
        ]
        .into_iter()
        .collect();
        assert!(write_atomic(dir.path(), &first).unwrap());
        assert!(!write_atomic(dir.path(), &first).unwrap());
        let a = dir.path().join("a");
        assert!(
            std::fs::symlink_metadata(&a)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "1");
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("d/x")).unwrap(),
            "x"
        );
        let old = std::fs::read_link(dir.path().join(DATA_LINK)).unwrap();

        let second: Payload = [("a".to_owned(), file("2", 0o600))].into_iter().collect();
        assert!(write_atomic(dir.path(), &second).unwrap());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "2");
        assert!(!dir.path().join("d").exists());
        assert!(!dir.path().join(old).exists());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with(".."))
            .collect();
        assert_eq!(names, ["a"]);
    }
}
