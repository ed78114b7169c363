#!/usr/bin/env bash
# Builds a small busybox image, offline-capable, from Debian's busybox-static package:
#   scripts/build-busybox-image.sh OUT.tar [TAG...]
# The archive is both a `docker save` tarball (manifest.json) and an OCI image layout
# (oci-layout, index.json, blobs/), as Docker 25+ writes them, so `flotilla image import`,
# `docker load` and `ctr images import` all take it. Tagged busybox:latest, busybox:1.36 (what
# Kubernetes examples use; the content is Debian's busybox, whatever its version) and
# busybox:<package version>, unless TAGs are given.
#
# The busybox binary comes from $BUSYBOX if set, else `apt-get download busybox-static`, else a
# static busybox on PATH. Exit code 77: none could be had.
set -euo pipefail

out=${1:?usage: $0 OUT.tar [TAG...]}
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# A static ELF has no PT_INTERP program header; a dynamic busybox would not run in the image.
is_static() {
    python3 - "$1" <<'PY'
import struct, sys
with open(sys.argv[1], "rb") as f:
    h = f.read(64)
    if h[:4] != b"\x7fELF" or h[4] != 2:
        sys.exit(1)
    e = "<" if h[5] == 1 else ">"
    phoff, = struct.unpack(e + "Q", h[32:40])
    phentsize, phnum = struct.unpack(e + "HH", h[54:58])
    for i in range(phnum):
        f.seek(phoff + i * phentsize)
        if struct.unpack(e + "I", f.read(4))[0] == 3:
            sys.exit(1)
PY
}

busybox=""
if [[ -n "${BUSYBOX:-}" ]]; then
    busybox=$BUSYBOX
else
    fetch() { (cd "$work" && apt-get download busybox-static) >/dev/null 2>&1; }
    if command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
        # apt's lists may be missing on a fresh machine; refreshing them needs root.
        if ! fetch && [[ $(id -u) == 0 ]]; then
            apt-get update -qq >/dev/null 2>&1 || true
            fetch || true
        fi
        deb=$(ls "$work"/busybox-static_*.deb 2>/dev/null | head -n1 || true)
        if [[ -n "$deb" ]]; then
            dpkg-deb -x "$deb" "$work/deb"
            busybox="$work/deb/bin/busybox"
        fi
    fi
    if [[ -z "$busybox" ]]; then
        for candidate in $(command -v busybox 2>/dev/null) /bin/busybox /usr/bin/busybox; do
            if [[ -x "$candidate" ]] && is_static "$candidate" 2>/dev/null; then
                busybox=$candidate
                break
            fi
        done
    fi
fi
if [[ -z "$busybox" || ! -x "$busybox" ]]; then
    echo "build-busybox-image: no busybox-static package (apt-get download failed) and no static busybox binary found" >&2
    exit 77
fi
if ! is_static "$busybox"; then
    echo "build-busybox-image: $busybox is dynamically linked; a static busybox is needed" >&2
    exit 1
fi

version=$("$busybox" 2>&1 | sed -n '1s/^BusyBox v\([0-9][0-9.]*\).*/\1/p')
if [[ $# -eq 0 ]]; then
    set -- latest 1.36 ${version:+"$version"}
fi
applets="$work/applets"
"$busybox" --list-full >"$applets" 2>/dev/null || "$busybox" --list | sed 's|^|bin/|' >"$applets"

python3 - "$out" "$busybox" "$applets" "${SOURCE_DATE_EPOCH:-0}" "$@" <<'PY'
import gzip, hashlib, io, json, os, platform, sys, tarfile

out, busybox, applets_file, epoch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
tags = list(dict.fromkeys(sys.argv[5:]))
arch = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386",
        "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}.get(platform.machine(), platform.machine())

def info(name, kind=tarfile.REGTYPE, mode=0o644, size=0, target=""):
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.linkname = kind, mode, size, target
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = epoch, 0, 0, "root", "root"
    return ti

# The root filesystem layer.
entries = {}
def add_dir(path, mode=0o755):
    entries[path + "/"] = (info(path, tarfile.DIRTYPE, mode), None)
for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "var", "var/log", "home", "proc", "sys", "dev"]:
    add_dir(d)
add_dir("tmp", 0o1777)
add_dir("root", 0o700)
with open(busybox, "rb") as f:
    data = f.read()
entries["bin/busybox"] = (info("bin/busybox", mode=0o755, size=len(data)), data)
files = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    "etc/group": b"root:x:0:\nnogroup:x:65534:\n",
}
for name, body in files.items():
    entries[name] = (info(name, size=len(body)), body)
with open(applets_file) as f:
    for line in f:
        p = line.strip().lstrip("/")
        if not p or p == "bin/busybox" or p in entries:
            continue
        parent = os.path.dirname(p)
        if parent and parent + "/" not in entries:
            add_dir(parent)
        entries[p] = (info(p, tarfile.SYMTYPE, 0o777, target=os.path.relpath("bin/busybox", parent or ".")), None)

buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    for name in sorted(entries):
        ti, body = entries[name]
        t.addfile(ti, io.BytesIO(body) if body is not None else None)
layer = buf.getvalue()
diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
zbuf = io.BytesIO()
with gzip.GzipFile(fileobj=zbuf, mode="wb", mtime=0) as z:
    z.write(layer)
layer_gz = zbuf.getvalue()

def dump(doc):
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()

def blob(data, media_type):
    d = hashlib.sha256(data).hexdigest()
    return {"mediaType": media_type, "digest": "sha256:" + d, "size": len(data)}, "blobs/sha256/" + d

created = "1970-01-01T00:00:00Z" if epoch == 0 else __import__("datetime").datetime.fromtimestamp(
    epoch, __import__("datetime").timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
config = dump({
    "architecture": arch, "os": "linux", "created": created,
    "config": {"Cmd": ["sh"], "Env": ["PATH=/bin:/sbin:/usr/bin:/usr/sbin"]},
    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    "history": [{"created": created, "created_by": "scripts/build-busybox-image.sh"}],
})
config_desc, config_path = blob(config, "application/vnd.oci.image.config.v1+json")
layer_desc, layer_path = blob(layer_gz, "application/vnd.oci.image.layer.v1.tar+gzip")
manifest = dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                 "config": config_desc, "layers": [layer_desc]})
manifest_desc, manifest_path = blob(manifest, "application/vnd.oci.image.manifest.v1+json")
index = dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
              "manifests": [dict(manifest_desc, annotations={
                  "io.containerd.image.name": "docker.io/library/busybox:" + t,
                  "org.opencontainers.image.ref.name": t}) for t in tags]})
docker_manifest = dump([{"Config": config_path, "RepoTags": ["busybox:" + t for t in tags],
                         "Layers": [layer_path]}])

tmp = out + ".tmp"
with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
    t.addfile(info("blobs", tarfile.DIRTYPE, 0o755))
    t.addfile(info("blobs/sha256", tarfile.DIRTYPE, 0o755))
    for name, data in [(config_path, config), (layer_path, layer_gz), (manifest_path, manifest),
                       ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index),
                       ("manifest.json", docker_manifest)]:
        t.addfile(info(name, size=len(data)), io.BytesIO(data))
os.replace(tmp, out)
print(f"{out}: busybox:{', busybox:'.join(tags)} ({arch}, {len(layer_gz)} bytes compressed, config {config_desc['digest'][:19]})")
PY
