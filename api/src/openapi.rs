//! OpenAPI v3 documents generated from the k8s-openapi types (their `schemars` schemas), one per
//! group-version, plus the schema walk behind `fieldValidation` (unknown fields, wrong types).
//!
//! kubectl's default `apply` reads `/openapi/v3/<gv>` only to learn that PATCH accepts
//! `fieldValidation`; it then leaves validation to us. `kubectl explain` renders the schemas.

use crate::At;
use std::collections::{BTreeMap, HashMap};
use std::sync::LazyLock;

use k8s_openapi::api::{
    apps::v1 as apps, autoscaling::v1 as as1, autoscaling::v2 as as2, batch::v1 as batch,
    coordination::v1 as coord, core::v1 as core, discovery::v1 as disc, events::v1 as ev,
    networking::v1 as net, policy::v1 as policy, rbac::v1 as rbac, storage::v1 as storage,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
use schemars::{JsonSchema, SchemaGenerator, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use crate::resources::{RESOURCES, Resource};

/// The Kubernetes release whose types (k8s-openapi `v1_33`) we serve.
const SPEC_VERSION: &str = "v1.33.0";
const SCHEMA_PREFIX: &str = "#/components/schemas/";
const QUANTITY: &str = "io.k8s.apimachinery.pkg.api.resource.Quantity";

/// Adds the schema of one served kind to `generator` and returns its component name.
fn kind_schema(generator: &mut SchemaGenerator, r: &Resource) -> Option<String> {
    fn add<T: JsonSchema>(generator: &mut SchemaGenerator) -> Option<String> {
        generator.subschema_for::<T>();
        Some(T::schema_name().into_owned())
    }
    match (r.group, r.version, r.kind) {
        ("", "v1", "Namespace") => add::<core::Namespace>(generator),
        ("", "v1", "Node") => add::<core::Node>(generator),
        ("", "v1", "Pod") => add::<core::Pod>(generator),
        ("", "v1", "Service") => add::<core::Service>(generator),
        ("", "v1", "Endpoints") => add::<core::Endpoints>(generator),
        ("", "v1", "ConfigMap") => add::<core::ConfigMap>(generator),
        ("", "v1", "Secret") => add::<core::Secret>(generator),
        ("", "v1", "Event") => add::<core::Event>(generator),
        ("", "v1", "ServiceAccount") => add::<core::ServiceAccount>(generator),
        ("", "v1", "PersistentVolume") => add::<core::PersistentVolume>(generator),
        ("", "v1", "PersistentVolumeClaim") => add::<core::PersistentVolumeClaim>(generator),
        ("", "v1", "ReplicationController") => add::<core::ReplicationController>(generator),
        ("apps", "v1", "Deployment") => add::<apps::Deployment>(generator),
        ("apps", "v1", "ReplicaSet") => add::<apps::ReplicaSet>(generator),
        ("apps", "v1", "StatefulSet") => add::<apps::StatefulSet>(generator),
        ("apps", "v1", "DaemonSet") => add::<apps::DaemonSet>(generator),
        ("apps", "v1", "ControllerRevision") => add::<apps::ControllerRevision>(generator),
        ("batch", "v1", "Job") => add::<batch::Job>(generator),
        ("batch", "v1", "CronJob") => add::<batch::CronJob>(generator),
        ("discovery.k8s.io", "v1", "EndpointSlice") => add::<disc::EndpointSlice>(generator),
        ("coordination.k8s.io", "v1", "Lease") => add::<coord::Lease>(generator),
        ("events.k8s.io", "v1", "Event") => add::<ev::Event>(generator),
        ("networking.k8s.io", "v1", "Ingress") => add::<net::Ingress>(generator),
        ("networking.k8s.io", "v1", "IngressClass") => add::<net::IngressClass>(generator),
        ("autoscaling", "v1", "HorizontalPodAutoscaler") => {
            add::<as1::HorizontalPodAutoscaler>(generator)
        }
        ("autoscaling", "v2", "HorizontalPodAutoscaler") => {
            add::<as2::HorizontalPodAutoscaler>(generator)
        }
        ("policy", "v1", "PodDisruptionBudget") => add::<policy::PodDisruptionBudget>(generator),
        ("storage.k8s.io", "v1", "StorageClass") => add::<storage::StorageClass>(generator),
        ("rbac.authorization.k8s.io", "v1", "Role") => add::<rbac::Role>(generator),
        ("rbac.authorization.k8s.io", "v1", "RoleBinding") => add::<rbac::RoleBinding>(generator),
        ("rbac.authorization.k8s.io", "v1", "ClusterRole") => add::<rbac::ClusterRole>(generator),
        ("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding") => {
            add::<rbac::ClusterRoleBinding>(generator)
        }
        _ => None,
    }
}

fn generator() -> SchemaGenerator {
    SchemaSettings::openapi3().into_generator()
}

fn gvk(r: &Resource) -> Value {
    json!({"group": r.group, "kind": r.kind, "version": r.version})
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("{SCHEMA_PREFIX}{name}")})
}

fn query_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "query", "description": description,
           "schema": {"type": "string", "uniqueItems": true}})
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": format!("{name} of the object"),
           "schema": {"type": "string", "uniqueItems": true}})
}

/// The query parameters every write accepts; kubectl looks for `fieldValidation` on PATCH.
fn write_params(patch: bool) -> Vec<Value> {
    let mut params = vec![
        query_param(
            "dryRun",
            "When present, modifications are not persisted. Valid values: All",
        ),
        query_param(
            "fieldManager",
            "A name associated with the actor making these changes.",
        ),
        query_param(
            "fieldValidation",
            "How to handle unknown or duplicate fields: Ignore, Warn (the default) or Strict.",
        ),
    ];
    if patch {
        params.push(json!({"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true},
            "description": "Force is going to \"force\" Apply requests. It means user will re-acquire conflicting fields owned by other people."}));
    }
    params
}

fn op_id(verb: &str, r: &Resource, suffix: &str) -> String {
    let group: String = r
        .group
        .split('.')
        .next()
        .unwrap_or("")
        .chars()
        .enumerate()
        .map(|(i, c)| if i == 0 { c.to_ascii_uppercase() } else { c })
        .collect();
    let version = {
        let mut v = r.version.to_owned();
        if let Some(first) = v.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        v
    };
    let scope = if r.namespaced { "Namespaced" } else { "" };
    let group = if group.is_empty() {
        "Core".into()
    } else {
        group
    };
    format!("{verb}{group}{version}{scope}{}{suffix}", r.kind)
}

fn operation(
    r: &Resource,
    verb: &str,
    action: &str,
    body: Option<&str>,
    response: &str,
    params: Vec<Value>,
    suffix: &str,
) -> Value {
    let content = |schema: &str| {
        let s = schema_ref(schema);
        json!({"application/json": {"schema": s}, "application/yaml": {"schema": s}})
    };
    let mut op = json!({
        "operationId": op_id(verb, r, suffix),
        "tags": [if r.group.is_empty() { "core_v1".to_owned() } else { format!("{}_{}", r.group, r.version) }],
        "parameters": params,
        "responses": {
            "200": {"description": "OK", "content": content(response)},
            "401": {"description": "Unauthorized"}
        },
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk(r),
    });
    if action == "post" {
        op["responses"]["201"] = json!({"description": "Created", "content": content(response)});
    }
    if let Some(body) = body {
        let mut request = content(body);
        if action == "patch" {
            let patch = schema_ref("io.k8s.apimachinery.pkg.apis.meta.v1.Patch");
            for ct in [
                "application/json-patch+json",
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/apply-patch+yaml",
            ] {
                request[ct] = json!({"schema": patch});
            }
            if let Some(obj) = request.as_object_mut() {
                obj.remove("application/json");
                obj.remove("application/yaml");
            }
        }
        op["requestBody"] = json!({"content": request, "required": true});
    }
    op
}

/// Paths of one resource: collection, item, and the status and scale subresources.
fn resource_paths(r: &Resource, schema: &str, paths: &mut Map<String, Value>) {
    let base = if r.group.is_empty() {
        format!("/api/{}", r.version)
    } else {
        format!("/apis/{}/{}", r.group, r.version)
    };
    let scoped = if r.namespaced {
        format!("{base}/namespaces/{{namespace}}/{}", r.plural)
    } else {
        format!("{base}/{}", r.plural)
    };
    let mut scope_params = Vec::new();
    if r.namespaced {
        scope_params.push(path_param("namespace"));
    }
    let status = "io.k8s.apimachinery.pkg.apis.meta.v1.Status";
    let delete_options = "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions";
    let list_params = || {
        [
            "labelSelector",
            "fieldSelector",
            "resourceVersion",
            "limit",
            "continue",
            "watch",
        ]
        .iter()
        .map(|p| query_param(p, p))
        .collect::<Vec<_>>()
    };
    let with = |base: &[Value], extra: Vec<Value>| {
        let mut all = base.to_vec();
        all.extend(extra);
        all
    };
    paths.insert(
        scoped.clone(),
        json!({
            "get": operation(r, "list", "list", None, schema, with(&scope_params, list_params()), ""),
            "post": operation(r, "create", "post", Some(schema), schema, with(&scope_params, write_params(false)), ""),
            "delete": operation(r, "deleteCollection", "deletecollection", Some(delete_options), status, with(&scope_params, list_params()), ""),
        }),
    );
    let mut item_params = scope_params.clone();
    item_params.push(path_param("name"));
    paths.insert(
        format!("{scoped}/{{name}}"),
        json!({
            "get": operation(r, "read", "get", None, schema, item_params.clone(), ""),
            "put": operation(r, "replace", "put", Some(schema), schema, with(&item_params, write_params(false)), ""),
            "patch": operation(r, "patch", "patch", Some(schema), schema, with(&item_params, write_params(true)), ""),
            "delete": operation(r, "delete", "delete", Some(delete_options), status, item_params.clone(), ""),
        }),
    );
    if r.has_status() {
        paths.insert(
            format!("{scoped}/{{name}}/status"),
            json!({
                "get": operation(r, "read", "get", None, schema, item_params.clone(), "Status"),
                "put": operation(r, "replace", "put", Some(schema), schema, with(&item_params, write_params(false)), "Status"),
                "patch": operation(r, "patch", "patch", Some(schema), schema, with(&item_params, write_params(true)), "Status"),
            }),
        );
    }
    if r.has_scale() {
        let scale = "io.k8s.api.autoscaling.v1.Scale";
        paths.insert(
            format!("{scoped}/{{name}}/scale"),
            json!({
                "get": operation(r, "read", "get", None, scale, item_params.clone(), "Scale"),
                "put": operation(r, "replace", "put", Some(scale), scale, with(&item_params, write_params(false)), "Scale"),
                "patch": operation(r, "patch", "patch", Some(scale), scale, with(&item_params, write_params(true)), "Scale"),
            }),
        );
    }
    if r.namespaced {
        paths.insert(
            format!("{base}/{}", r.plural),
            json!({"get": operation(r, "list", "list", None, schema, list_params(), "ForAllNamespaces")}),
        );
    }
}

/// `api/v1` or `apis/<group>/<version>`: the key of a group-version in the index.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// The strategic-merge metadata kubectl reads from OpenAPI to compute apply patches: without
/// it, kubectl treats every list as atomic and re-sends whole lists on each apply.
/// k8s-openapi's schemas do not carry it, so it comes from the same merge-key table the
/// server's strategic merge uses.
fn add_patch_extensions(schema: &mut Value) {
    let Some(Value::Object(props)) = schema.get_mut("properties") else {
        return;
    };
    for (field, prop) in props.iter_mut() {
        if prop.get("type").and_then(Value::as_str) != Some("array") {
            continue;
        }
        let item_ref = prop
            .at("/items/$ref")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if field == "finalizers" && item_ref.is_empty() {
            prop["x-kubernetes-list-type"] = json!("set");
            prop["x-kubernetes-patch-strategy"] = json!("merge");
            continue;
        }
        if item_ref.is_empty() {
            continue;
        }
        // `ports` is keyed by containerPort in containers and by port in Services.
        let sample = item_ref
            .ends_with("ContainerPort")
            .then(|| json!({"containerPort": 0}));
        let key = match field.as_str() {
            "ports"
                if !item_ref.ends_with("ContainerPort") && !item_ref.ends_with("ServicePort") =>
            {
                None
            }
            _ => crate::patch::merge_key(field, sample.as_ref()),
        };
        let Some(key) = key else { continue };
        let strategy = if field == "volumes" {
            "merge,retainKeys"
        } else {
            "merge"
        };
        prop["x-kubernetes-patch-merge-key"] = json!(key);
        prop["x-kubernetes-patch-strategy"] = json!(strategy);
        prop["x-kubernetes-list-type"] = json!("map");
        let keys = match key {
            "containerPort" | "port" => json!([key, "protocol"]),
            _ => json!([key]),
        };
        prop["x-kubernetes-list-map-keys"] = keys;
    }
}

fn sha512_hex(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA512, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect()
}

/// One served document: its JSON and its content hash.
pub struct Document {
    pub body: Vec<u8>,
    pub hash: String,
}

/// Everything derived from the schemas, built once on first use.
pub struct OpenApi {
    pub index: Vec<u8>,
    pub documents: HashMap<String, Document>,
    /// Component schemas of every kind, without descriptions, for validation.
    schemas: Map<String, Value>,
    /// (apiVersion, kind) → component name.
    roots: HashMap<(String, String), String>,
}

fn strip_descriptions(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("description");
            // `properties` keys are field names: a field called "description" must stay.
            for (_, child) in map.iter_mut() {
                strip_descriptions(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_descriptions),
        _ => {}
    }
}

fn build() -> OpenApi {
    let mut by_gv: BTreeMap<(&str, &str), Vec<&Resource>> = BTreeMap::new();
    for r in RESOURCES {
        by_gv.entry((r.group, r.version)).or_default().push(r);
    }
    let mut documents = HashMap::new();
    let mut index = Map::new();
    let mut schemas = Map::new();
    let mut roots = HashMap::new();
    for ((group, version), resources) in by_gv {
        let mut generator = generator();
        generator.subschema_for::<meta::Status>();
        generator.subschema_for::<meta::DeleteOptions>();
        generator.subschema_for::<meta::Patch>();
        if resources.iter().any(|r| r.has_scale()) {
            generator.subschema_for::<as1::Scale>();
        }
        let mut paths = Map::new();
        let mut kinds = Vec::new();
        for r in resources {
            let Some(name) = kind_schema(&mut generator, r) else {
                continue;
            };
            resource_paths(r, &name, &mut paths);
            kinds.push((r, name));
        }
        let mut definitions = generator.take_definitions(true);
        for schema in definitions.values_mut() {
            add_patch_extensions(schema);
        }
        for (r, name) in &kinds {
            if let Some(Value::Object(schema)) = definitions.get_mut(name) {
                schema.insert(
                    "x-kubernetes-group-version-kind".into(),
                    Value::Array(vec![gvk(r)]),
                );
            }
            roots.insert((r.api_version(), r.kind.to_owned()), name.clone());
        }
        let doc = json!({
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": SPEC_VERSION},
            "paths": paths,
            "components": {"schemas": definitions},
        });
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let hash = sha512_hex(&body);
        let key = gv_path(group, version);
        index.insert(
            key.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={hash}")}),
        );
        if let Some(Value::Object(defs)) = doc.get("components").and_then(|c| c.get("schemas")) {
            for (name, schema) in defs {
                let mut schema = schema.clone();
                strip_descriptions(&mut schema);
                if name == QUANTITY {
                    // Marks the one int-or-string type whose numbers are stored as strings.
                    schema["format"] = json!("quantity");
                }
                schemas.insert(name.clone(), schema);
            }
        }
        documents.insert(key, Document { body, hash });
    }
    let index = serde_json::to_vec(&json!({ "paths": index })).unwrap_or_default();
    OpenApi {
        index,
        documents,
        schemas,
        roots,
    }
}

pub static OPENAPI: LazyLock<OpenApi> = LazyLock::new(build);

/// What the schema walk found wrong with an object.
#[derive(Debug, Default)]
pub struct Findings {
    /// Fields the schema does not know, as `spec.template.spec.containers[0].imagee`.
    pub unknown: Vec<String>,
    /// Values of the wrong JSON type: (field path, expected type, what was found).
    pub wrong_type: Vec<(String, &'static str, &'static str)>,
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

impl OpenApi {
    /// Walks `obj` against the schema of (apiVersion, kind), removing fields the schema does
    /// not know. Quantities given as numbers (`cpu: 1`) are rewritten to strings, as the
    /// apiserver stores them. Returns `None` when the kind has no schema.
    pub fn check(&self, api_version: &str, kind: &str, obj: &mut Value) -> Option<Findings> {
        let root = self.roots.get(&(api_version.to_owned(), kind.to_owned()))?;
        let mut findings = Findings::default();
        let schema = self.schemas.get(root)?;
        self.walk(schema, obj, &mut String::new(), &mut findings, 0);
        Some(findings)
    }

    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        let mut schema = schema;
        // `allOf: [{$ref}]` is how a described reference is written.
        for _ in 0..8 {
            if let Some(r) = schema.get("$ref").and_then(Value::as_str) {
                match r
                    .strip_prefix(SCHEMA_PREFIX)
                    .and_then(|n| self.schemas.get(n))
                {
                    Some(s) => schema = s,
                    None => return schema,
                }
            } else if let Some([only]) = schema
                .get("allOf")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
            {
                schema = only;
            } else {
                break;
            }
        }
        schema
    }

    fn walk(
        &self,
        schema: &Value,
        v: &mut Value,
        path: &mut String,
        out: &mut Findings,
        depth: usize,
    ) {
        if depth > 64 {
            return;
        }
        let schema = self.resolve(schema);
        if v.is_null() {
            // Go decodes null as the zero value for any field.
            return;
        }
        if schema.get("x-kubernetes-int-or-string").is_some() {
            let quantity = schema.get("format").and_then(Value::as_str) == Some("quantity");
            match v {
                Value::Number(n) if quantity => *v = Value::String(n.to_string()),
                Value::Number(_) | Value::String(_) => {}
                other => {
                    out.wrong_type
                        .push((display_path(path), "string or integer", json_type(other)))
                }
            }
            return;
        }
        if schema.get("x-kubernetes-preserve-unknown-fields").is_some() {
            return;
        }
        let ty = schema.get("type").and_then(Value::as_str);
        match (ty, &mut *v) {
            (Some("object") | None, Value::Object(map)) => {
                if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                    let mut unknown = Vec::new();
                    for (key, child) in map.iter_mut() {
                        let len = path.len();
                        if !path.is_empty() {
                            path.push('.');
                        }
                        path.push_str(key);
                        match props.get(key) {
                            Some(s) => self.walk(s, child, path, out, depth + 1),
                            None => {
                                out.unknown.push(path.clone());
                                unknown.push(key.clone());
                            }
                        }
                        path.truncate(len);
                    }
                    // Like decoding into the Go types: unknown fields are not stored.
                    for key in unknown {
                        map.remove(&key);
                    }
                } else if let Some(items) =
                    schema.get("additionalProperties").filter(|a| a.is_object())
                {
                    for (key, child) in map.iter_mut() {
                        let len = path.len();
                        path.push('.');
                        path.push_str(key);
                        self.walk(items, child, path, out, depth + 1);
                        path.truncate(len);
                    }
                }
            }
            (Some("array"), Value::Array(items)) => {
                if let Some(item) = schema.get("items") {
                    for (i, child) in items.iter_mut().enumerate() {
                        let len = path.len();
                        path.push_str(&format!("[{i}]"));
                        self.walk(item, child, path, out, depth + 1);
                        path.truncate(len);
                    }
                }
            }
            (Some("string"), Value::String(_)) | (Some("boolean"), Value::Bool(_)) | (None, _) => {}
            (Some("integer"), Value::Number(n)) if n.is_i64() || n.is_u64() => {}
            (Some("number"), Value::Number(_)) => {}
            (Some(expected), found) => {
                let expected = match expected {
                    "object" => "object",
                    "array" => "array",
                    "string" => "string",
                    "boolean" => "boolean",
                    "integer" => "integer",
                    "number" => "number",
                    _ => return,
                };
                out.wrong_type
                    .push((display_path(path), expected, json_type(found)));
            }
        }
    }
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "<root>".into()
    } else {
        path.to_owned()
    }
}
