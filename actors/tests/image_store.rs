//! Builds the busybox image with `scripts/build-busybox-image.sh`, imports it into a store and
//! runs the image's busybox from its root filesystem. Skipped (with a message) where neither
//! `apt-get download busybox-static` nor a static busybox is available.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use flotilla_actors::image::ImageStore;

#[test]
fn busybox_image_from_the_script_imports_and_runs() {
    let t = tempfile::tempdir().unwrap();
    let archive = t.path().join("busybox.tar");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-busybox-image.sh");
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&script)
        .arg(&archive)
        .output()
        .unwrap();
    if out.status.code() == Some(77) {
        println!(
            "SKIPPED: no busybox available: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return;
    }
    assert!(
        out.status.success(),
        "{} failed: {}{}",
        script.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("built the image in {:?}", started.elapsed());

    let store = ImageStore::open(&t.path().join("images")).unwrap();
    let started = Instant::now();
    let imported = store.import(&archive).unwrap();
    println!("imported {} in {:?}", archive.display(), started.elapsed());
    assert_eq!(imported.len(), 1);
    for r in [
        "busybox",
        "busybox:latest",
        "busybox:1.36",
        "docker.io/library/busybox:1.36",
    ] {
        assert!(store.resolve(r).is_some(), "{r} does not resolve");
    }
    let image = store.resolve("busybox:1.36").unwrap();
    assert_eq!(image.config.cmd, vec!["sh"]);
    assert_eq!(image.config.env, vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin"]);
    assert!(image.size_bytes > 500_000, "{}", image.size_bytes);
    for dir in ["tmp", "etc", "proc", "dev"] {
        assert!(image.rootfs.join(dir).is_dir(), "{dir}");
    }
    assert!(
        std::fs::read_to_string(image.rootfs.join("etc/passwd"))
            .unwrap()
            .starts_with("root:x:0:0:")
    );

    let hi = Command::new(image.rootfs.join("bin/busybox"))
        .args(["echo", "hi"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&hi.stdout), "hi\n");
    // The applet links are relative, so they work from the host too.
    let sh = Command::new(image.rootfs.join("bin/sh"))
        .args(["-c", "echo $((6 * 7))"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&sh.stdout), "42\n");
    assert!(
        image
            .rootfs
            .join("usr/bin/wget")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // Importing again is cheap (the rootfs is kept), and removal cleans up.
    let started = Instant::now();
    assert_eq!(store.import(&archive).unwrap()[0].id, image.id);
    println!("re-imported in {:?}", started.elapsed());
    store.remove(&image.id).unwrap();
    assert!(store.list().is_empty());
    assert!(!image.rootfs.exists());
}
