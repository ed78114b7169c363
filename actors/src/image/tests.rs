//! Store tests on tiny archives built here: docker-save and OCI layouts, whiteouts, links,
//! refused escapes and corrupt digests, and a pull from a registry served on loopback.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use serde_json::json;

use super::digest::sha256_bytes;
use super::*;

enum E<'a> {
    Dir(&'a str, u32),
    File(&'a str, &'a [u8], u32),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    /// A regular file whose name is written raw, bypassing the tar writer's checks.
    RawName(&'a [u8], &'a [u8]),
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn tar_of(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            E::Dir(p, mode) => {
                let mut h = header(tar::EntryType::Directory, *mode, 0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            E::File(p, data, mode) => {
                let mut h = header(tar::EntryType::Regular, *mode, data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            E::Symlink(p, target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::Hardlink(p, target) => {
                let mut h = header(tar::EntryType::Link, 0o644, 0);
                b.append_link(&mut h, p, target).unwrap();
            }
            E::RawName(name, data) => {
                let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
                let old = h.as_old_mut();
                old.name = [0; 100];
                old.name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn config_of(layers: &[&[u8]]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers.iter().map(|l| sha256_bytes(l)).collect();
    serde_json::to_vec(&json!({
        "architecture": Platform::host().architecture,
        "os": "linux",
        "config": {
            "Entrypoint": ["/bin/tool"],
            "Cmd": ["serve", "--port=80"],
            "Env": ["PATH=/bin", "A=1"],
            "WorkingDir": "/data",
            "User": "1000:1000",
            "StopSignal": "SIGQUIT"
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap()
}

/// An archive of named files (docker-save or OCI layout), in the given order.
fn archive_of(files: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, name, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, data).unwrap();
    p
}

/// Layer 1: a base tree. Layer 2 (gzip'd in the archives): whiteouts, an opaque dir, a symlink,
/// a hardlink, an overwrite.
fn two_layers() -> (Vec<u8>, Vec<u8>) {
    let l1 = tar_of(&[
        E::Dir("etc/", 0o755),
        E::File("etc/a", b"a", 0o644),
        E::File("etc/b", b"old b", 0o600),
        E::Dir("data/", 0o755),
        E::File("data/old", b"old", 0o644),
        E::Dir("data/sub/", 0o755),
        E::File("data/sub/lower", b"x", 0o644),
        E::Dir("bin/", 0o755),
        E::File("bin/tool", b"#!/bin/sh\necho tool\n", 0o755),
        E::Dir("ro/", 0o555),
        E::File("ro/f", b"f", 0o444),
    ]);
    let l2 = tar_of(&[
        E::File("etc/.wh.a", b"", 0o644),
        E::File("etc/b", b"new b", 0o640),
        E::Dir("data/", 0o700),
        E::File("data/.wh..wh..opq", b"", 0o644),
        E::File("data/sub/upper", b"y", 0o644),
        E::File("data/new", b"new", 0o644),
        E::Symlink("link", "etc/b"),
        E::Hardlink("hard", "bin/tool"),
        E::File("ro/g", b"g", 0o644),
    ]);
    (l1, l2)
}

fn docker_save(l1: &[u8], l2: &[u8], tags: &[&str]) -> Vec<u8> {
    let config = config_of(&[l1, l2]);
    let cfg_name = format!("{}.json", &sha256_bytes(&config)[7..]);
    let manifest = json!([{
        "Config": cfg_name,
        "RepoTags": tags,
        "Layers": ["l1/layer.tar", "l2/layer.tar"],
    }]);
    // manifest.json last, as `docker save` writes it.
    archive_of(&[
        (cfg_name.clone(), config),
        ("l1/layer.tar".into(), l1.to_vec()),
        ("l2/layer.tar".into(), gzip(l2)),
        ("repositories".into(), b"{}".to_vec()),
        (
            "manifest.json".into(),
            serde_json::to_vec(&manifest).unwrap(),
        ),
    ])
}

fn blob_name(data: &[u8]) -> String {
    format!("blobs/sha256/{}", &sha256_bytes(data)[7..])
}

fn desc(media_type: &str, data: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": sha256_bytes(data), "size": data.len()})
}

/// An OCI layout: index.json → multi-platform index → (this platform's manifest, another
/// platform's that is absent from the archive).
fn oci_layout(l1: &[u8], l2: &[u8], name: &str) -> Vec<u8> {
    let config = config_of(&[l1, l2]);
    let l2z = gzip(l2);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MT_OCI_MANIFEST,
        "config": desc(oci::MT_OCI_CONFIG, &config),
        "layers": [desc(oci::MT_OCI_LAYER, l1), desc(oci::MT_OCI_LAYER_GZIP, &l2z)],
    }))
    .unwrap();
    let host = Platform::host();
    let mut m = desc(oci::MT_OCI_MANIFEST, &manifest);
    m["platform"] = json!({"os": "linux", "architecture": host.architecture});
    let other = json!({
        "mediaType": oci::MT_OCI_MANIFEST,
        "digest": format!("sha256:{}", "0".repeat(64)),
        "size": 10,
        "platform": {"os": "linux", "architecture": "s390x-not-this-one"},
    });
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MT_OCI_INDEX,
        "manifests": [other, m],
    }))
    .unwrap();
    let mut top = desc(oci::MT_OCI_INDEX, &nested);
    top["annotations"] = json!({ oci::ANN_REF_NAME: name });
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [top]})).unwrap();
    archive_of(&[
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
        (blob_name(&nested), nested.clone()),
        (blob_name(&manifest), manifest.clone()),
        (blob_name(&config), config.clone()),
        (blob_name(l1), l1.to_vec()),
        (blob_name(&l2z), l2z.clone()),
    ])
}

fn check_rootfs(img: &Image) {
    let r = &img.rootfs;
    assert!(!r.join("etc/a").exists(), "whiteout applied");
    assert_eq!(fs::read(r.join("etc/b")).unwrap(), b"new b");
    assert_eq!(
        fs::metadata(r.join("etc/b")).unwrap().mode() & 0o7777,
        0o640
    );
    assert!(
        !r.join("data/old").exists(),
        "opaque dir hides the lower layer"
    );
    assert!(
        !r.join("data/sub/lower").exists(),
        "opaque dir hides the lower layer"
    );
    assert_eq!(fs::read(r.join("data/sub/upper")).unwrap(), b"y");
    assert_eq!(fs::read(r.join("data/new")).unwrap(), b"new");
    assert_eq!(fs::metadata(r.join("data")).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(fs::read_link(r.join("link")).unwrap(), Path::new("etc/b"));
    let tool = fs::metadata(r.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o755);
    assert_eq!(
        fs::metadata(r.join("hard")).unwrap().ino(),
        tool.ino(),
        "hardlink kept"
    );
    // A read-only directory of a lower layer still got the upper layer's file.
    assert_eq!(fs::metadata(r.join("ro")).unwrap().mode() & 0o7777, 0o555);
    assert_eq!(fs::read(r.join("ro/g")).unwrap(), b"g");
    assert_eq!(
        img.config,
        ImageConfig {
            entrypoint: vec!["/bin/tool".into()],
            cmd: vec!["serve".into(), "--port=80".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: Some("/data".into()),
            user: Some("1000:1000".into()),
            stop_signal: Some("SIGQUIT".into()),
        }
    );
}

fn tmp_is_empty(store: &ImageStore) -> bool {
    fs::read_dir(store.dir().join("tmp"))
        .unwrap()
        .next()
        .is_none()
}

#[test]
fn imports_docker_save_with_whiteouts_and_links() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let (l1, l2) = two_layers();
    let file = write(
        t.path(),
        "save.tar",
        &docker_save(&l1, &l2, &["app:1", "example.com:5000/x/app:v2"]),
    );
    let imported = store.import(&file).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(
        imported[0].references,
        vec!["docker.io/library/app:1", "example.com:5000/x/app:v2"]
    );
    let img = store.resolve("app:1").unwrap();
    assert_eq!(img.id, imported[0].id);
    assert_eq!(img.id, sha256_bytes(&config_of(&[&l1, &l2])));
    check_rootfs(&img);
    assert_eq!(store.resolve("docker.io/library/app:1").unwrap().id, img.id);
    assert_eq!(store.resolve(&img.id).unwrap().id, img.id);
    assert_eq!(store.resolve(img.short_id()).unwrap().id, img.id);
    assert!(store.resolve("app:2").is_none());
    assert!(store.resolve("app").is_none());
    assert_eq!(
        img.repo_tags(),
        vec![
            ("app".to_owned(), "1".to_owned()),
            ("example.com:5000/x/app".to_owned(), "v2".to_owned())
        ]
    );
    assert!(img.size_bytes > 0);
    assert!(tmp_is_empty(&store));
    // Layers, config and manifest are content-addressed blobs.
    for d in [&img.id, &imported[0].manifest_digest, &sha256_bytes(&l1)] {
        assert!(
            store.dir().join("blobs/sha256").join(&d[7..]).is_file(),
            "{d}"
        );
    }

    // Importing again changes nothing; the same config is one image.
    let again = store.import(&file).unwrap();
    assert_eq!(again[0].id, img.id);
    assert_eq!(store.list().len(), 1);

    // Removing one tag keeps the image; removing the last removes it, rootfs and blobs.
    store.remove("app:1").unwrap();
    let img2 = store.resolve("example.com:5000/x/app:v2").unwrap();
    assert_eq!(img2.references, vec!["example.com:5000/x/app:v2"]);
    assert!(img2.rootfs.is_dir());
    store.remove("example.com:5000/x/app:v2").unwrap();
    assert!(store.list().is_empty());
    assert!(!img.rootfs.exists());
    assert!(
        fs::read_dir(store.dir().join("blobs/sha256"))
            .unwrap()
            .next()
            .is_none()
    );
    assert!(matches!(
        store.remove("app:1"),
        Err(RuntimeError::NotFound(_))
    ));
}

#[test]
fn imports_gzipped_oci_layout_for_this_platform() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let (l1, l2) = two_layers();
    let file = write(
        t.path(),
        "oci.tar.gz",
        &gzip(&oci_layout(&l1, &l2, "busybox:1.36")),
    );
    let imported = store.import(&file).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(
        imported[0].references,
        vec!["docker.io/library/busybox:1.36"]
    );
    let img = store.resolve("busybox:1.36").unwrap();
    check_rootfs(&img);
    // The manifest digest pins it, whatever repository it is asked under.
    let by_digest = format!("busybox@{}", imported[0].manifest_digest);
    assert_eq!(store.resolve(&by_digest).unwrap().id, img.id);
    assert_eq!(store.list(), vec![img.clone()]);
    store.remove(&img.id).unwrap();
    assert!(store.list().is_empty());
}

#[test]
fn docker_save_with_two_images_sharing_a_layer() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let base = tar_of(&[E::File("base", b"base", 0o644)]);
    let top_a = tar_of(&[E::File("a", b"a", 0o644)]);
    let top_b = tar_of(&[E::File("b", b"b", 0o644)]);
    let ca = config_of(&[&base, &top_a]);
    let cb = config_of(&[&base, &top_b]);
    let manifest = json!([
        {"Config": "a.json", "RepoTags": ["a:1"], "Layers": ["base/layer.tar", "a/layer.tar"]},
        {"Config": "b.json", "RepoTags": ["b:1"], "Layers": ["dup/layer.tar", "b/layer.tar"]},
    ]);
    let mut bld = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("a.json", &ca),
        ("b.json", &cb),
        ("base/layer.tar", &base),
        ("a/layer.tar", &top_a),
        ("b/layer.tar", &top_b),
    ] {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        bld.append_data(&mut h, name, &data[..]).unwrap();
    }
    // `docker save` links a repeated layer to its first copy.
    let mut h = header(tar::EntryType::Symlink, 0o777, 0);
    bld.append_link(&mut h, "dup/layer.tar", "../base/layer.tar")
        .unwrap();
    let m = serde_json::to_vec(&manifest).unwrap();
    let mut h = header(tar::EntryType::Regular, 0o644, m.len() as u64);
    bld.append_data(&mut h, "manifest.json", &m[..]).unwrap();
    let file = write(t.path(), "two.tar", &bld.into_inner().unwrap());
    let imported = store.import(&file).unwrap();
    assert_eq!(imported.len(), 2);
    let a = store.resolve("a:1").unwrap();
    let b = store.resolve("b:1").unwrap();
    assert!(a.rootfs.join("base").is_file() && a.rootfs.join("a").is_file());
    assert!(b.rootfs.join("base").is_file() && b.rootfs.join("b").is_file());
    assert!(!b.rootfs.join("a").exists());
    // Removing one keeps the shared layer blob for the other.
    store.remove("a:1").unwrap();
    let shared = store
        .dir()
        .join("blobs/sha256")
        .join(&sha256_bytes(&base)[7..]);
    assert!(shared.is_file());
    store.remove("b:1").unwrap();
    assert!(!shared.exists());
}

fn import_err(layers: &[Vec<u8>]) -> (RuntimeError, ImageStore, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let refs: Vec<&[u8]> = layers.iter().map(Vec::as_slice).collect();
    let config = config_of(&refs);
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let mut files = vec![("c.json".to_owned(), config)];
    files.extend(names.iter().cloned().zip(layers.iter().cloned()));
    let manifest = json!([{"Config": "c.json", "RepoTags": ["bad:1"], "Layers": names}]);
    files.push((
        "manifest.json".into(),
        serde_json::to_vec(&manifest).unwrap(),
    ));
    let file = write(t.path(), "bad.tar", &archive_of(&files));
    let err = store.import(&file).unwrap_err();
    assert!(store.list().is_empty(), "a failed import leaves no image");
    assert!(
        tmp_is_empty(&store),
        "a failed import leaves no temporary files"
    );
    (err, store, t)
}

#[test]
fn refuses_paths_escaping_the_root() {
    for name in [&b"../evil"[..], b"a/../../evil", b"/etc/evil-abs"] {
        let layer = tar_of(&[E::Dir("a/", 0o755), E::RawName(name, b"pwned")]);
        let (err, _store, t) = import_err(&[layer]);
        assert!(matches!(err, RuntimeError::Invalid(_)), "{err}");
        assert!(!t.path().join("evil").exists());
        assert!(!t.path().join("images/evil").exists());
    }
    // A hardlink to a file outside the root.
    let layer = tar_of(&[E::Hardlink("h", "../../../../etc/hostname")]);
    let (err, _s, _t) = import_err(&[layer]);
    assert!(matches!(err, RuntimeError::Invalid(_)), "{err}");
}

#[test]
fn symlinks_are_followed_inside_the_root_only() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let outside_str = outside.to_str().unwrap().to_owned();
    let l1 = tar_of(&[
        E::Symlink("abs", &outside_str),
        E::Symlink("up", "../../../../.."),
        E::Symlink("loop", "loop"),
    ]);
    let l2 = tar_of(&[
        E::File("abs/pwned", b"1", 0o644),
        E::File("up/pwned2", b"2", 0o644),
        E::File(".wh.etc", b"", 0o644),
    ]);
    let archive = archive_of(&[
        ("c.json".into(), config_of(&[&l1, &l2])),
        ("l1.tar".into(), l1.clone()),
        ("l2.tar".into(), l2.clone()),
        (
            "manifest.json".into(),
            serde_json::to_vec(
                &json!([{"Config": "c.json", "RepoTags": ["s:1"], "Layers": ["l1.tar", "l2.tar"]}]),
            )
            .unwrap(),
        ),
    ]);
    let file = write(t.path(), "s.tar", &archive);
    store.import(&file).unwrap();
    let img = store.resolve("s:1").unwrap();
    assert!(
        fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
    // Resolved as a chroot would: the absolute link lands under the root, `..` stops at it.
    let inside = img
        .rootfs
        .join(outside.strip_prefix("/").unwrap())
        .join("pwned");
    assert_eq!(fs::read(inside).unwrap(), b"1");
    assert_eq!(fs::read(img.rootfs.join("pwned2")).unwrap(), b"2");

    // A symlink loop is an error, not a hang.
    let l3 = tar_of(&[E::Symlink("loop", "loop"), E::File("loop/x", b"", 0o644)]);
    let (err, _s, _t) = import_err(&[l3]);
    assert!(matches!(err, RuntimeError::Invalid(_)), "{err}");
}

#[test]
fn refuses_corrupt_digests() {
    // docker-save: a layer whose content does not match the config's diff id.
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let good = tar_of(&[E::File("f", b"good", 0o644)]);
    let evil = tar_of(&[E::File("f", b"evil", 0o644)]);
    let config = config_of(&[&good]);
    let manifest = json!([{"Config": "c.json", "RepoTags": ["x:1"], "Layers": ["l.tar"]}]);
    let file = write(
        t.path(),
        "x.tar",
        &archive_of(&[
            ("c.json".into(), config.clone()),
            ("l.tar".into(), evil),
            (
                "manifest.json".into(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
        ]),
    );
    let err = store.import(&file).unwrap_err().to_string();
    assert!(err.contains("diff id"), "{err}");
    assert!(store.list().is_empty() && tmp_is_empty(&store));

    // docker-save: a config whose file name is not its digest.
    let named = format!("{}.json", "a".repeat(64));
    let manifest = json!([{"Config": named, "RepoTags": ["x:1"], "Layers": ["l.tar"]}]);
    let file = write(
        t.path(),
        "y.tar",
        &archive_of(&[
            (named.clone(), config.clone()),
            ("l.tar".into(), good.clone()),
            (
                "manifest.json".into(),
                serde_json::to_vec(&manifest).unwrap(),
            ),
        ]),
    );
    let err = store.import(&file).unwrap_err().to_string();
    assert!(err.contains("corrupt config"), "{err}");

    // OCI: a blob whose content does not match its name.
    let (l1, l2) = two_layers();
    let mut oci = oci_layout(&l1, &l2, "docker.io/library/x:1");
    let pos = oci.windows(5).position(|w| w == b"old b").unwrap();
    oci[pos] = b'N';
    let file = write(t.path(), "z.tar", &oci);
    let err = store.import(&file).unwrap_err().to_string();
    assert!(err.contains("corrupt blob"), "{err}");
    assert!(store.list().is_empty() && tmp_is_empty(&store));

    // Not an image archive at all.
    let file = write(
        t.path(),
        "n.tar",
        &archive_of(&[("hello".into(), b"x".to_vec())]),
    );
    assert!(store.import(&file).is_err());
    let file = write(
        t.path(),
        "garbage",
        b"definitely not a tar archive, just some bytes",
    );
    assert!(store.import(&file).is_err());
}

#[test]
fn tag_moves_to_a_new_image() {
    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let v1 = tar_of(&[E::File("v", b"1", 0o644)]);
    let v2 = tar_of(&[E::File("v", b"2", 0o644)]);
    for (name, layer) in [("one.tar", &v1), ("two.tar", &v2)] {
        let manifest =
            json!([{"Config": "c.json", "RepoTags": ["app:latest"], "Layers": ["l.tar"]}]);
        let file = write(
            t.path(),
            name,
            &archive_of(&[
                ("c.json".into(), config_of(&[layer])),
                ("l.tar".into(), layer.clone()),
                (
                    "manifest.json".into(),
                    serde_json::to_vec(&manifest).unwrap(),
                ),
            ]),
        );
        store.import(&file).unwrap();
    }
    let img = store.resolve("app").unwrap();
    assert_eq!(fs::read(img.rootfs.join("v")).unwrap(), b"2");
    let list = store.list();
    assert_eq!(list.len(), 2);
    let old = list.iter().find(|i| i.id != img.id).unwrap();
    assert!(
        old.references.is_empty(),
        "the old image is left untagged, like Docker's"
    );
}

#[test]
fn concurrent_imports_of_one_image_agree() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("images");
    let (l1, l2) = two_layers();
    let file = write(t.path(), "save.tar", &docker_save(&l1, &l2, &["app:1"]));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (dir, file) = (dir.clone(), file.clone());
            std::thread::spawn(move || ImageStore::open(&dir).unwrap().import(&file).unwrap())
        })
        .collect();
    let ids: Vec<String> = threads
        .into_iter()
        .map(|h| h.join().unwrap()[0].id.clone())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]));
    let store = ImageStore::open(&dir).unwrap();
    assert_eq!(store.list().len(), 1);
    check_rootfs(&store.resolve("app:1").unwrap());
    assert!(tmp_is_empty(&store));
}

#[test]
fn read_only_trees_are_removable() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("x");
    fs::create_dir_all(dir.join("a/b")).unwrap();
    fs::write(dir.join("a/b/f"), b"").unwrap();
    fs::set_permissions(dir.join("a/b"), fs::Permissions::from_mode(0o500)).unwrap();
    fs::set_permissions(dir.join("a"), fs::Permissions::from_mode(0o000)).unwrap();
    extract::force_remove(&dir).unwrap();
    assert!(!dir.exists());
}

/// A registry on loopback: bearer token auth, a manifest list, blobs behind a redirect.
mod registry {
    use std::collections::HashMap;
    use std::sync::Arc;

    use axum::extract::{Path as UrlPath, State};
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::{IntoResponse, Response};

    pub struct Content {
        pub manifests: HashMap<String, (String, Vec<u8>)>,
        pub blobs: HashMap<String, Vec<u8>>,
        pub port: u16,
    }

    pub async fn serve(content: Arc<std::sync::Mutex<Content>>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        content.lock().unwrap().port = port;
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .route("/v2/{*rest}", axum::routing::get(v2))
            .route("/cdn/{digest}", axum::routing::get(cdn))
            .with_state(content);
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    async fn token(axum::extract::RawQuery(q): axum::extract::RawQuery) -> Response {
        let q = q.unwrap_or_default();
        if q.contains("scope=repository:team/tiny:pull") && q.contains("service=test-registry") {
            (
                [(header::CONTENT_TYPE, "application/json")],
                r#"{"token":"good"}"#,
            )
                .into_response()
        } else {
            (StatusCode::BAD_REQUEST, format!("bad token request {q}")).into_response()
        }
    }

    async fn v2(
        State(c): State<Arc<std::sync::Mutex<Content>>>,
        UrlPath(rest): UrlPath<String>,
        headers: HeaderMap,
    ) -> Response {
        let c = c.lock().unwrap();
        if headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            != Some("Bearer good")
        {
            let challenge = format!(
                r#"Bearer realm="http://127.0.0.1:{}/token",service="test-registry",scope="repository:team/tiny:pull""#,
                c.port
            );
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
            )
                .into_response();
        }
        if let Some(r) = rest.strip_prefix("team/tiny/manifests/") {
            return match c.manifests.get(r) {
                Some((mt, body)) => {
                    ([(header::CONTENT_TYPE, mt.clone())], body.clone()).into_response()
                }
                None => StatusCode::NOT_FOUND.into_response(),
            };
        }
        if let Some(d) = rest.strip_prefix("team/tiny/blobs/") {
            // Another host name, as a CDN would be: the token must not follow.
            let location = format!("http://localhost:{}/cdn/{d}", c.port);
            return (
                StatusCode::TEMPORARY_REDIRECT,
                [(header::LOCATION, location)],
            )
                .into_response();
        }
        StatusCode::NOT_FOUND.into_response()
    }

    async fn cdn(
        State(c): State<Arc<std::sync::Mutex<Content>>>,
        UrlPath(digest): UrlPath<String>,
        headers: HeaderMap,
    ) -> Response {
        if headers.contains_key(header::AUTHORIZATION) {
            return (StatusCode::BAD_REQUEST, "credentials leaked to the CDN").into_response();
        }
        match c.lock().unwrap().blobs.get(&digest) {
            Some(b) => b.clone().into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

#[tokio::test]
async fn pulls_from_a_registry_with_token_auth() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    let t = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let (l1, l2) = two_layers();
    let l2z = gzip(&l2);
    let config = config_of(&[&l1, &l2]);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MT_DOCKER_MANIFEST,
        "config": desc("application/vnd.docker.container.image.v1+json", &config),
        "layers": [desc(oci::MT_OCI_LAYER, &l1), desc("application/vnd.docker.image.rootfs.diff.tar.gzip", &l2z)],
    }))
    .unwrap();
    let mut entry = desc(oci::MT_DOCKER_MANIFEST, &manifest);
    entry["platform"] = json!({"os": "linux", "architecture": Platform::host().architecture});
    let list = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::MT_DOCKER_LIST,
        "manifests": [
            {"mediaType": oci::MT_DOCKER_MANIFEST, "digest": format!("sha256:{}", "1".repeat(64)), "size": 1,
             "platform": {"os": "linux", "architecture": "other"}},
            entry,
        ],
    }))
    .unwrap();
    let mut manifests = HashMap::new();
    manifests.insert(
        "1.0".to_owned(),
        (oci::MT_DOCKER_LIST.to_owned(), list.clone()),
    );
    manifests.insert(
        sha256_bytes(&manifest),
        (oci::MT_DOCKER_MANIFEST.to_owned(), manifest.clone()),
    );
    let mut blobs = HashMap::new();
    for b in [&config, &l1, &l2z] {
        blobs.insert(sha256_bytes(b), b.clone());
    }
    let content = Arc::new(Mutex::new(registry::Content {
        manifests,
        blobs,
        port: 0,
    }));
    let port = registry::serve(content.clone()).await;

    let reference = format!("127.0.0.1:{port}/team/tiny:1.0");
    let pulled = store.pull(&reference).await.unwrap();
    assert_eq!(pulled.manifest_digest, sha256_bytes(&manifest));
    let img = store.resolve(&reference).unwrap();
    assert_eq!(img.id, sha256_bytes(&config));
    check_rootfs(&img);
    // The list's digest and the platform manifest's digest both name it.
    let repo = format!("127.0.0.1:{port}/team/tiny");
    assert_eq!(
        store
            .resolve(&format!("{repo}@{}", sha256_bytes(&list)))
            .unwrap()
            .id,
        img.id
    );
    assert_eq!(
        store
            .resolve(&format!("{repo}@{}", sha256_bytes(&manifest)))
            .unwrap()
            .id,
        img.id
    );
    assert!(tmp_is_empty(&store));

    // A tag the registry does not have, and a corrupt blob.
    let err = store.pull(&format!("{repo}:nope")).await.unwrap_err();
    assert!(matches!(err, RuntimeError::ImagePull { .. }), "{err}");
    store.remove(&img.id).unwrap();
    content
        .lock()
        .unwrap()
        .blobs
        .insert(sha256_bytes(&l1), b"tampered".to_vec());
    let err = store.pull(&reference).await.unwrap_err().to_string();
    assert!(err.contains("corrupt"), "{err}");
    assert!(store.list().is_empty() && tmp_is_empty(&store));

    // Nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().port();
    drop(closed);
    let err = store
        .pull(&format!("127.0.0.1:{dead}/x/y:1"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("no registry reachable"), "{err}");
}
