#!/usr/bin/env python3
"""Generates api/src/pb_schema.rs: decoding tables for Kubernetes protobuf request bodies.

Usage:
    python3 api/gen/pbschema.py <k8s.io/api repo> <k8s.io/apimachinery repo> [--rev REV] [-o OUT]

Both repositories may be bare (they are read with `git show REV:path`, REV defaults to HEAD).
The tables cover only the messages reachable from the kinds in TOP_LEVEL.

Field numbers and types come from the `generated.proto` files. JSON names come from the Go
struct tags next to them (`types.go`), because the proto name is not always the JSON name
(`IngressClassParametersReference.aPIGroup` is `apiGroup` in JSON) and because embedded structs
(`Volume.volumeSource`, `Probe.handler`, ...) are inlined into their parent in JSON. The tags
also say which scalars Go's JSON encoder leaves out when zero (`omitempty`): Go's protobuf encoder
writes every non-pointer field, so the decoder needs this to drop the zeros a JSON client never
sends.

The output is piped through rustfmt when it is on PATH so `cargo fmt` leaves it alone.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys

# (proto package dir, apiVersion, kinds)
TOP_LEVEL = [
    ("core/v1", "v1", [
        "Namespace", "Node", "Pod", "Service", "Endpoints", "ConfigMap", "Secret", "Event",
        "ServiceAccount", "PersistentVolume", "PersistentVolumeClaim", "ReplicationController",
        "Binding",
    ]),
    ("apps/v1", "apps/v1", ["Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "ControllerRevision"]),
    ("batch/v1", "batch/v1", ["Job", "CronJob"]),
    ("discovery/v1", "discovery.k8s.io/v1", ["EndpointSlice"]),
    ("coordination/v1", "coordination.k8s.io/v1", ["Lease"]),
    ("events/v1", "events.k8s.io/v1", ["Event"]),
    ("networking/v1", "networking.k8s.io/v1", ["Ingress", "IngressClass"]),
    ("autoscaling/v1", "autoscaling/v1", ["HorizontalPodAutoscaler", "Scale"]),
    ("autoscaling/v2", "autoscaling/v2", ["HorizontalPodAutoscaler"]),
    ("rbac/v1", "rbac.authorization.k8s.io/v1", ["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"]),
    ("policy/v1", "policy/v1", ["Eviction", "PodDisruptionBudget"]),
]
# DeleteOptions is registered in every group version, so clients may send it under any
# apiVersion; message_for accepts it regardless of apiVersion.
DELETE_OPTIONS = ("k8s.io.apimachinery.pkg.apis.meta.v1", "DeleteOptions")

META = "k8s.io.apimachinery.pkg.apis.meta.v1"
# Messages with a custom JSON form, decoded by hand in protobuf.rs.
SPECIAL = {
    f"{META}.Time": "Time",
    f"{META}.MicroTime": "MicroTime",
    f"{META}.Duration": "Duration",
    f"{META}.FieldsV1": "FieldsV1",
    "k8s.io.apimachinery.pkg.util.intstr.IntOrString": "IntStr",
    "k8s.io.apimachinery.pkg.api.resource.Quantity": "Quantity",
    "k8s.io.apimachinery.pkg.runtime.RawExtension": "RawExt",
}
# `K` variants besides Ref, with their docs.
VARIANTS = [
    ("Str", None), ("Bytes", None), ("Bool", None), ("I32", None), ("I64", None),
    ("F64", None), ("F32", None),
    ("Time", "meta.v1.Time: RFC 3339, whole seconds."),
    ("MicroTime", "meta.v1.MicroTime: RFC 3339 with microseconds."),
    ("Duration", "meta.v1.Duration: Go duration string."),
    ("FieldsV1", "meta.v1.FieldsV1: raw JSON."),
    ("IntStr", "util.intstr.IntOrString: number or string."),
    ("Quantity", "api.resource.Quantity: its string."),
    ("RawExt", "runtime.RawExtension: raw JSON."),
]
SCALAR = {"string": "Str", "bytes": "Bytes", "bool": "Bool", "int32": "I32", "int64": "I64",
          "double": "F64", "float": "F32"}

# Field flags, mirrored by the constants in the generated file.
REPEATED, MAP, INLINE, OMIT = 1, 2, 4, 8


def die(msg):
    sys.exit(f"pbschema: {msg}")


class Repo:
    def __init__(self, path, rev):
        self.path, self.rev = path, rev
        self.commit = self.git("rev-parse", rev).strip()

    def git(self, *args):
        r = subprocess.run(["git", "-C", self.path, *args], capture_output=True, text=True)
        if r.returncode != 0:
            die(f"git {' '.join(args)} in {self.path}: {r.stderr.strip()}")
        return r.stdout

    def show(self, path):
        return self.git("show", f"{self.commit}:{path}")

    def ls(self, directory):
        return self.git("ls-tree", "--name-only", self.commit, directory + "/").split()


class Field:
    def __init__(self, label, typ, name, tag, map_value=None):
        self.label, self.typ, self.name, self.tag = label, typ, name, tag
        self.map_value = map_value  # value type for map<string, V>, else None


FIELD_RE = re.compile(r"^\s*(optional|repeated|required)\s+([\w.]+)\s+(\w+)\s*=\s*(\d+)\s*;")
MAP_RE = re.compile(r"^\s*map<\s*(\w+)\s*,\s*([\w.]+)\s*>\s+(\w+)\s*=\s*(\d+)\s*;")


def parse_proto(text, where):
    """Returns (package, {message name: [Field]}) of a k8s generated.proto (flat, proto2)."""
    package, messages, current = None, {}, None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("//", 1)[0].strip()
        if not line:
            continue
        if m := re.match(r"^package\s+([\w.]+)\s*;", line):
            package = m.group(1)
        elif m := re.match(r"^message\s+(\w+)\s*\{$", line):
            if current is not None:
                die(f"{where}:{lineno}: nested messages are not supported")
            current = messages.setdefault(m.group(1), [])
        elif line == "}":
            current = None
        elif m := FIELD_RE.match(line):
            current.append(Field(m.group(1), m.group(2), m.group(3), int(m.group(4))))
        elif m := MAP_RE.match(line):
            if m.group(1) != "string":
                die(f"{where}:{lineno}: map key {m.group(1)} is not supported")
            current.append(Field("map", None, m.group(3), int(m.group(4)), m.group(2)))
        elif re.match(r"^(syntax|import|option)\b", line) or line.startswith(("/*", "*")):
            continue
        elif current is not None or re.match(r"^(enum|oneof|extend|service)\b", line):
            die(f"{where}:{lineno}: unsupported proto syntax: {line}")
    if package is None:
        die(f"{where}: no package")
    return package, messages


class GoField:
    def __init__(self, json_name, inline, pointer, omitempty, go_type):
        self.json_name, self.inline, self.pointer = json_name, inline, pointer
        self.omitempty, self.go_type = omitempty, go_type


def parse_go_structs(text):
    """{struct name: {proto tag: GoField}} from the protobuf-tagged fields of Go structs."""
    structs, current = {}, None
    for line in text.splitlines():
        if m := re.match(r"^type\s+(\w+)\s+struct\s*\{", line):
            current = structs.setdefault(m.group(1), {})
            continue
        if line.startswith("}"):
            current = None
            continue
        if current is None:
            continue
        m = re.match(r"^\s*([^`]*?)\s*`([^`]*)`", line)
        if not m or 'protobuf:"' not in m.group(2):
            continue
        tags = dict(re.findall(r'(\w+):"([^"]*)"', m.group(2)))
        parts = tags["protobuf"].split(",")
        if len(parts) < 2 or not parts[1].isdigit():
            continue  # protobuf:"-"
        tokens = m.group(1).split()
        if not tokens:
            continue
        embedded = len(tokens) == 1
        go_type = tokens[-1]
        go_name = go_type.lstrip("*").split(".")[-1] if embedded else tokens[0]
        json_tag = tags.get("json")
        if json_tag is None:
            json_name, inline, opts = go_name, embedded, []
        else:
            name, _, rest = json_tag.partition(",")
            opts = rest.split(",")
            inline = (name == "" and embedded) or "inline" in opts
            json_name = name if name else go_name
        pointer = go_type.startswith("*")
        # For the scalars this is used for, `omitzero` drops exactly what `omitempty` does.
        omitempty = "omitempty" in opts or "omitzero" in opts
        current[int(parts[1])] = GoField(json_name, inline, pointer, omitempty, go_type)
    return structs


class Schema:
    def __init__(self, api, machinery):
        self.api, self.machinery = api, machinery
        self.protos = {}  # package -> {message: [Field]}
        self.go = {}  # package -> {struct: {tag: GoField}}
        self.short = {}  # package -> short Rust name prefix

    def locate(self, package):
        if package.startswith("k8s.io.api."):
            rest = package[len("k8s.io.api."):].split(".")
            return self.api, "/".join(rest), "_".join(rest)
        if package.startswith("k8s.io.apimachinery."):
            rest = package[len("k8s.io.apimachinery."):].split(".")
            return self.machinery, "/".join(rest), "_".join(rest[-2:] if rest[-1].startswith("v") else rest[-1:])
        die(f"unknown proto package {package}")

    def load(self, package):
        if package in self.protos:
            return
        repo, directory, short = self.locate(package)
        text = repo.show(f"{directory}/generated.proto")
        got, messages = parse_proto(text, f"{directory}/generated.proto")
        if got != package:
            die(f"{directory}/generated.proto declares package {got}, expected {package}")
        self.protos[package] = messages
        self.short[package] = short
        structs = {}
        for name in repo.ls(directory):
            base = os.path.basename(name)
            if not base.endswith(".go") or base.endswith("_test.go") or base.startswith(("zz_", "generated")):
                continue
            for struct, fields in parse_go_structs(repo.show(name)).items():
                structs.setdefault(struct, {}).update(fields)
        self.go[package] = structs

    def resolve(self, typ, package):
        """(package, message) of a message type reference."""
        if typ.startswith("."):
            pkg, _, name = typ[1:].rpartition(".")
        else:
            pkg, name = package, typ
        self.load(pkg)
        if name not in self.protos[pkg]:
            die(f"unknown message {pkg}.{name}")
        return pkg, name

    def rust_name(self, pkg, name):
        return f"M_{self.short[pkg]}_{name}"


def kind_of(schema, typ, package, queue):
    """Rust `K` expression for a field type, queueing referenced messages."""
    if typ in SCALAR:
        return SCALAR[typ]
    if typ in ("uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64", "sfixed32", "sfixed64"):
        die(f"scalar type {typ} is not supported by protobuf.rs")
    pkg, name = schema.resolve(typ, package)
    if f"{pkg}.{name}" in SPECIAL:
        return SPECIAL[f"{pkg}.{name}"]
    queue.append((pkg, name))
    return f"Ref(&{schema.rust_name(pkg, name)})"


def build(schema):
    roots = []  # (apiVersion, kind, pkg, name)
    for directory, api_version, kinds in TOP_LEVEL:
        pkg = "k8s.io.api." + directory.replace("/", ".")
        for kind in kinds:
            roots.append((api_version, kind, *schema.resolve(kind, pkg)))
    delete_options = schema.resolve(DELETE_OPTIONS[1], DELETE_OPTIONS[0])

    queue = [(p, n) for _, _, p, n in roots] + [delete_options]
    out = {}  # (pkg, name) -> [(tag, json name, kind, flags)]
    while queue:
        pkg, name = queue.pop()
        if (pkg, name) in out:
            continue
        go = schema.go[pkg].get(name)
        if go is None:
            die(f"no Go struct for {pkg}.{name} (a non-struct Go type needs special handling)")
        rows = []
        for f in schema.protos[pkg][name]:
            g = go.get(f.tag)
            if g is None:
                die(f"{pkg}.{name}.{f.name}: no Go field with protobuf tag {f.tag}")
            if g.json_name == "-":
                die(f"{pkg}.{name}.{f.name}: not in JSON (json:\"-\"); needs special handling")
            flags = 0
            if f.map_value is not None:
                kind = kind_of(schema, f.map_value, pkg, queue)
                flags |= MAP
            else:
                kind = kind_of(schema, f.typ, pkg, queue)
                if f.label == "repeated":
                    flags |= REPEATED
            if g.inline:
                if not kind.startswith("Ref(") or flags:
                    die(f"{pkg}.{name}.{f.name}: only singular messages can be inlined")
                flags |= INLINE
            if g.omitempty and not g.pointer and not flags and f.typ in SCALAR:
                # A pointer is only on the wire when set, and Go writes it even when zero.
                # omitempty never drops a struct, so messages (Time, Quantity, ...) are kept too.
                if not re.fullmatch(r"\[\]byte" if f.typ == "bytes" else r"[\w.]+", g.go_type):
                    die(f"{pkg}.{name}.{f.name}: Go type {g.go_type} does not fit proto {f.typ}")
                flags |= OMIT
            rows.append((f.tag, "" if g.inline else g.json_name, kind, flags))
        out[(pkg, name)] = rows
    return roots, delete_options, out


FLAG_NAMES = [(REPEATED, "R"), (MAP, "MAP"), (INLINE, "INL"), (OMIT, "OMIT")]


def flags_expr(flags):
    names = [n for bit, n in FLAG_NAMES if flags & bit]
    return "|".join(names) if names else "0"


PREAMBLE = '''\
// @generated by api/gen/pbschema.py from the Kubernetes generated.proto files
// (k8s.io/api @ {api}, k8s.io/apimachinery @ {machinery}). Do not edit by hand.
// Re-run: python3 api/gen/pbschema.py <k8s.io/api repo> <k8s.io/apimachinery repo>
//! Protobuf field tables of the built-in kinds, used by `crate::protobuf` to decode request
//! bodies into the JSON a JSON client would have sent.

#![allow(non_upper_case_globals)]

use K::*;

/// A protobuf message: its fields in declaration order.
pub struct Msg {{
    pub name: &'static str,
    pub fields: &'static [F],
}}

/// A field: tag, JSON name (empty when inlined), value kind, flags (`R`, `MAP`, `INL`, `OMIT`).
pub struct F(pub u32, pub &'static str, pub K, pub u8);

/// Wire/JSON kind of a field (for maps: of the value; keys are always strings).
#[derive(Clone, Copy)]
pub enum K {{
{variants}    Ref(&'static Msg),
}}

/// Repeated field.
pub const R: u8 = {repeated};
/// `map<string, K>`.
pub const MAP: u8 = {map};
/// Embedded Go struct whose fields JSON inlines into the parent.
pub const INL: u8 = {inline};
/// Non-pointer Go scalar tagged `omitempty`: Go's JSON encoder leaves it out when zero (`""`,
/// `false`, `0`), while its protobuf encoder writes it anyway.
pub const OMIT: u8 = {omit};

/// The message of a top-level object from its TypeMeta.
pub fn message_for(api_version: &str, kind: &str) -> Option<&'static Msg> {{
    Some(match (api_version, kind) {{
{arms}
        (_, "DeleteOptions") => &{delete_options},
        _ => return None,
    }})
}}
'''


def render_variants(messages):
    used = {kind for rows in messages.values() for _, _, kind, _ in rows}
    text = ""
    for name, doc in VARIANTS:
        if doc:
            text += f"    /// {doc}\n"
        if name not in used:
            # Decoded by protobuf.rs but used by none of the current tables.
            text += "    #[allow(dead_code)]\n"
        text += f"    {name},\n"
    return text


def render(schema, roots, delete_options, messages):
    arms = "\n".join(
        f'        ("{v}", "{k}") => &{schema.rust_name(p, n)},' for v, k, p, n in roots)
    text = PREAMBLE.format(
        api=schema.api.commit[:12], machinery=schema.machinery.commit[:12],
        repeated=REPEATED, map=MAP, inline=INLINE, omit=OMIT, arms=arms, variants=render_variants(messages),
        delete_options=schema.rust_name(*delete_options))
    for (pkg, name) in sorted(messages, key=lambda k: schema.rust_name(*k)):
        short = schema.short[pkg].replace("_", ".")
        text += f"\npub static {schema.rust_name(pkg, name)}: Msg = Msg {{\n"
        text += f'    name: "{short}.{name}",\n    fields: &[\n'
        for tag, json_name, kind, flags in messages[(pkg, name)]:
            text += f'        F({tag}, "{json_name}", {kind}, {flags_expr(flags)}),\n'
        text += "    ],\n};\n"
    return text


def rustfmt(text, cwd):
    exe = shutil.which("rustfmt")
    if exe is None:
        print("pbschema: rustfmt not found, output left unformatted", file=sys.stderr)
        return text
    r = subprocess.run([exe, "--edition", "2024", "--emit", "stdout"], input=text,
                       capture_output=True, text=True, cwd=cwd)
    if r.returncode != 0:
        die(f"rustfmt failed: {r.stderr}")
    return r.stdout


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("api", help="k8s.io/api git repository (bare is fine)")
    ap.add_argument("machinery", help="k8s.io/apimachinery git repository (bare is fine)")
    ap.add_argument("--rev", default="HEAD", help="revision to read in both repositories")
    ap.add_argument("-o", "--out", default=os.path.join(here, "..", "src", "pb_schema.rs"))
    args = ap.parse_args()

    schema = Schema(Repo(args.api, args.rev), Repo(args.machinery, args.rev))
    roots, delete_options, messages = build(schema)
    text = rustfmt(render(schema, roots, delete_options, messages), os.path.dirname(args.out))
    with open(args.out, "w") as f:
        f.write(text)
    print(f"pbschema: wrote {len(messages)} messages to {os.path.normpath(args.out)}", file=sys.stderr)


if __name__ == "__main__":
    main()
