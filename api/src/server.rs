//! The Kubernetes REST endpoints: version, discovery (aggregated and legacy) and the generic
//! create/get/list/update/delete of stored objects, with `Table` responses for kubectl.

use crate::At;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use flotilla_consensus::{Compare, KeyValue, Op, OpResult, Read, Store, TxnRequest};
use serde_json::{Value, json};

use crate::meta::{self, LabelSelector};
use crate::resources::{self, Resource};
use crate::status::{ApiError, StatusCause};

/// Requests larger than this are refused before parsing.
pub const MAX_REQUEST_BYTES: usize = 3 * 1024 * 1024;
/// Objects larger than this are refused (they would bloat every replica and watch).
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// The Kubernetes version the API answers as (the k8s-openapi and kubectl line it targets).
const KUBE_MINOR: &str = "33";

const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

struct Api {
    store: Store,
    pods: Option<Arc<dyn crate::pods::PodProxy>>,
}

type ApiResult = Result<Response, ApiError>;

/// The API routes, to be merged into a node's HTTP router.
pub fn router(store: Store, pods: Option<Arc<dyn crate::pods::PodProxy>>) -> Router {
    let state = Arc::new(Api { store, pods });
    Router::new()
        .route("/version", get(version))
        .route("/version/", get(version))
        .route("/api", get(core_discovery))
        .route("/api/", get(core_discovery))
        .route("/apis", get(group_discovery))
        .route("/apis/", get(group_discovery))
        .route("/openapi/v3", get(openapi_index))
        .route("/openapi/v3/", get(openapi_index))
        .route("/openapi/v3/{*gv}", get(openapi_document))
        // Its own route: the WebSocket upgrade needs the whole request.
        .route(
            "/api/v1/namespaces/{namespace}/pods/{name}/exec",
            any(pod_exec),
        )
        .route("/api/{*rest}", any(dispatch_root::<true>))
        .route("/apis/{*rest}", any(dispatch_root::<false>))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

fn json_bytes_response(body: Vec<u8>, cache: Option<&str>) -> Response {
    let mut resp = (StatusCode::OK, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(hash) = cache
        && let Ok(etag) = HeaderValue::from_str(&format!("\"{hash}\""))
    {
        // Documents are addressed by their hash, so clients may keep them.
        headers.insert(header::ETAG, etag);
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, immutable"),
        );
    }
    resp
}

/// `GET /openapi/v3`: one entry per group-version, pointing at its hashed document.
async fn openapi_index() -> Response {
    json_bytes_response(crate::openapi::OPENAPI.index.clone(), None)
}

/// `GET /openapi/v3/api/v1`, `/openapi/v3/apis/<group>/<version>`.
async fn openapi_document(Path(gv): Path<String>) -> Response {
    match crate::openapi::OPENAPI.documents.get(gv.trim_matches('/')) {
        Some(doc) => json_bytes_response(doc.body.clone(), Some(&doc.hash)),
        None => ApiError::path_not_found().into_response(),
    }
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    let mut bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes.push(b'\n');
    let mut resp = (code, bytes).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

async fn version() -> Response {
    json_response(
        StatusCode::OK,
        &json!({
            "major": "1",
            "minor": KUBE_MINOR,
            "emulationMajor": "1",
            "emulationMinor": KUBE_MINOR,
            "minCompatibilityMajor": "1",
            "minCompatibilityMinor": "32",
            "gitVersion": format!("v1.{KUBE_MINOR}.0-flotilla.{}", env!("CARGO_PKG_VERSION")),
            "gitCommit": "",
            "gitTreeState": "clean",
            "buildDate": "",
            "goVersion": "",
            "compiler": "rustc",
            "platform": format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH),
        }),
    )
}

/// Whether the client asked for aggregated discovery v2 (kubectl 1.33 always does).
fn wants_aggregated(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.contains("g=apidiscovery.k8s.io") && t.contains("v=v2") && !t.contains("v=v2beta1")
        })
}

/// The subresources of a resource as `(name, group, version, kind, verbs)`.
fn subresources(
    r: &Resource,
) -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [&'static str],
)> {
    const STATUS_VERBS: &[&str] = &["get", "patch", "update"];
    let mut out = Vec::new();
    if r.has_status() {
        out.push(("status", r.group, r.version, r.kind, STATUS_VERBS));
    }
    if r.has_scale() {
        out.push(("scale", "autoscaling", "v1", "Scale", STATUS_VERBS));
    }
    if r.plural == "pods" && r.group.is_empty() {
        out.push(("log", "", "v1", "Pod", &["get"]));
        out.push(("exec", "", "v1", "PodExecOptions", &["create", "get"]));
        // `kubectl drain` looks for exactly this entry (name, kind, group and version) in
        // `/api/v1` before it evicts rather than deletes.
        out.push(("eviction", "policy", "v1", "Eviction", &["create"]));
    }
    out
}

fn discovery_resource(r: &Resource) -> Value {
    let subs: Vec<Value> = subresources(r)
        .into_iter()
        .map(|(sub, group, version, kind, verbs)| {
            json!({"subresource": sub, "responseKind": {"group": group, "version": version, "kind": kind}, "verbs": verbs})
        })
        .collect();
    json!({
        "resource": r.plural,
        "responseKind": {"group": r.group, "version": r.version, "kind": r.kind},
        "scope": if r.namespaced { "Namespaced" } else { "Cluster" },
        "singularResource": r.singular,
        "verbs": resources::VERBS,
        "shortNames": r.short_names,
        "categories": r.categories,
        "subresources": subs,
    })
}

fn aggregated(groups: &[(&'static str, Vec<&'static str>)]) -> Response {
    let items: Vec<Value> = groups
        .iter()
        .map(|(group, versions)| {
            json!({
                "metadata": {"name": group, "creationTimestamp": null},
                "versions": versions.iter().map(|v| json!({
                    "version": v,
                    "freshness": "Current",
                    "resources": resources::of_group_version(group, v).into_iter().map(discovery_resource).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut resp = json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items}),
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(AGGREGATED_CONTENT_TYPE),
    );
    resp.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    resp
}

async fn core_discovery(headers: HeaderMap) -> Response {
    if wants_aggregated(&headers) {
        let core: Vec<_> = resources::groups()
            .into_iter()
            .filter(|(g, _)| g.is_empty())
            .collect();
        return aggregated(&core);
    }
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
    )
}

async fn group_discovery(headers: HeaderMap) -> Response {
    let groups: Vec<_> = resources::groups()
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .collect();
    if wants_aggregated(&headers) {
        return aggregated(&groups);
    }
    let list: Vec<Value> = groups
        .iter()
        .map(|(g, versions)| {
            let gvs: Vec<Value> = versions
                .iter()
                .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                .collect();
            json!({"name": g, "versions": gvs, "preferredVersion": gvs[0]})
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": list}),
    )
}

fn resource_list(group: &str, version: &str) -> ApiResult {
    let rs = resources::of_group_version(group, version);
    if rs.is_empty() {
        return Err(ApiError::path_not_found());
    }
    let group_version = rs[0].api_version();
    let mut list: Vec<Value> = Vec::new();
    for r in &rs {
        list.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": resources::VERBS,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        for (sub, group, version, kind, verbs) in subresources(r) {
            let mut entry = json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": kind,
                "verbs": verbs,
            });
            if group != r.group {
                entry["group"] = json!(group);
                entry["version"] = json!(version);
            }
            list.push(entry);
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": list}),
    ))
}

/// What a request path names below `/api/v1` or `/apis/<g>/<v>`.
struct Target {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<Sub>,
}

/// The subresources served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    Status,
    Scale,
    Log,
    Eviction,
}

impl Sub {
    fn name(self) -> &'static str {
        match self {
            Sub::Status => "status",
            Sub::Scale => "scale",
            Sub::Log => "log",
            Sub::Eviction => "eviction",
        }
    }
}

fn subresource(r: &Resource, name: &str) -> Result<Sub, ApiError> {
    match name {
        "status" if r.has_status() => Ok(Sub::Status),
        "scale" if r.has_scale() => Ok(Sub::Scale),
        "log" if r.plural == "pods" => Ok(Sub::Log),
        "eviction" if r.plural == "pods" && r.group.is_empty() => Ok(Sub::Eviction),
        other => Err(ApiError::path_not_found_msg(&format!(
            "{} has no subresource {other:?}",
            r.qualified_plural()
        ))),
    }
}

fn parse_target(group: &str, version: &str, segs: &[&str]) -> Result<Target, ApiError> {
    let find =
        |plural: &str| resources::find(group, version, plural).ok_or_else(ApiError::path_not_found);
    let target = |resource, namespace: Option<&str>, name: Option<&str>, sub| Target {
        resource,
        namespace: namespace.map(str::to_owned),
        name: name.map(str::to_owned),
        sub,
    };
    match segs {
        ["namespaces", ns, plural, rest @ ..]
            if resources::find(group, version, plural).is_some_and(|r| r.namespaced) =>
        {
            let r = find(plural)?;
            match rest {
                [] => Ok(target(r, Some(ns), None, None)),
                [name] => Ok(target(r, Some(ns), Some(name), None)),
                [name, sub] => Ok(target(r, Some(ns), Some(name), Some(subresource(r, sub)?))),
                _ => Err(ApiError::path_not_found()),
            }
        }
        [plural] => Ok(target(find(plural)?, None, None, None)),
        [plural, name, rest @ ..] => {
            let r = find(plural)?;
            if r.namespaced {
                return Err(ApiError::path_not_found());
            }
            match rest {
                [] => Ok(target(r, None, Some(name), None)),
                [sub] => Ok(target(r, None, Some(name), Some(subresource(r, sub)?))),
                _ => Err(ApiError::path_not_found()),
            }
        }
        [] => Err(ApiError::path_not_found()),
    }
}

#[derive(serde::Deserialize, Default)]
struct ListQuery {
    #[serde(rename = "labelSelector")]
    label_selector: Option<String>,
    #[serde(rename = "fieldSelector")]
    field_selector: Option<String>,
    watch: Option<String>,
    #[serde(rename = "resourceVersion")]
    resource_version: Option<String>,
    #[serde(rename = "timeoutSeconds")]
    timeout_seconds: Option<u64>,
    #[serde(rename = "allowWatchBookmarks")]
    allow_watch_bookmarks: Option<String>,
    #[serde(rename = "sendInitialEvents")]
    send_initial_events: Option<String>,
    limit: Option<i64>,
    #[serde(rename = "continue")]
    continue_token: Option<String>,
    #[serde(rename = "fieldValidation")]
    field_validation: Option<String>,
    #[serde(rename = "fieldManager")]
    field_manager: Option<String>,
    force: Option<String>,
    #[serde(rename = "dryRun")]
    dry_run: Option<String>,
    #[serde(rename = "gracePeriodSeconds")]
    grace_period_seconds: Option<i64>,
    #[serde(rename = "propagationPolicy")]
    propagation_policy: Option<String>,
    #[serde(rename = "orphanDependents")]
    orphan_dependents: Option<bool>,
    // pods/log
    container: Option<String>,
    follow: Option<String>,
    previous: Option<String>,
    timestamps: Option<String>,
    #[serde(rename = "tailLines")]
    tail_lines: Option<i64>,
    #[serde(rename = "sinceSeconds")]
    since_seconds: Option<i64>,
    #[serde(rename = "limitBytes")]
    limit_bytes: Option<i64>,
}

/// Turns extractor failures into `Status` errors (axum's own are plain text).
fn extract(
    q: Result<Query<ListQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(ListQuery, Bytes), ApiError> {
    let Query(q) = q.map_err(|e| {
        ApiError::bad_request(format!("invalid query parameters: {}", e.body_text()))
    })?;
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!(
                "the request is larger than the limit of {MAX_REQUEST_BYTES} bytes"
            ))
        } else {
            ApiError::bad_request(format!("cannot read the request body: {}", e.body_text()))
        }
    })?;
    Ok((q, body))
}

/// The request's `labelSelector` (empty: everything matches).
fn label_selector(q: &ListQuery) -> Result<LabelSelector, ApiError> {
    match &q.label_selector {
        Some(s) => LabelSelector::parse(s).map_err(ApiError::bad_request),
        None => Ok(LabelSelector::default()),
    }
}

fn is_true(v: &Option<String>) -> bool {
    matches!(v.as_deref(), Some("true" | "True" | "1"))
}

/// Handler for `/api/{*rest}` (`CORE`) and `/apis/{*rest}`.
async fn dispatch_root<const CORE: bool>(
    state: State<Arc<Api>>,
    method: Method,
    headers: HeaderMap,
    Path(rest): Path<String>,
    q: Result<Query<ListQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    route(state, CORE, method, headers, &rest, q, body).await
}

/// `pods/exec`: a command in a container, over a WebSocket.
async fn pod_exec(
    State(api): State<Arc<Api>>,
    Path((namespace, name)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Response {
    let result = async {
        let target = parse_target("", "v1", &["namespaces", &namespace, "pods", &name])?;
        let current = read_current(&api, &target, &name).await?;
        let pod = served(target.resource, &current)?;
        crate::exec::exec(api.pods.clone(), &pod, request).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// Routes a path below `/api/` (core) or `/apis/` (named groups).
async fn route(
    State(api): State<Arc<Api>>,
    core: bool,
    method: Method,
    headers: HeaderMap,
    rest: &str,
    q: Result<Query<ListQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (q, body) = match extract(q, body) {
        Ok(x) => x,
        Err(e) => return e.into_response(),
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let result = match (core, segs.as_slice()) {
        (true, ["v1"]) => resource_list("", "v1"),
        (true, ["v1", tail @ ..]) => {
            dispatch(&api, "", "v1", tail, method, &headers, &q, body).await
        }
        (false, [group]) => api_group(group),
        (false, [group, version]) => resource_list(group, version),
        (false, [group, version, tail @ ..]) => {
            dispatch(&api, group, version, tail, method, &headers, &q, body).await
        }
        _ => Err(ApiError::path_not_found()),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /apis/<group>`: the group and its versions.
fn api_group(group: &str) -> ApiResult {
    let (g, vs) = resources::groups()
        .into_iter()
        .find(|(g, _)| *g == group)
        .ok_or_else(ApiError::path_not_found)?;
    let gvs: Vec<Value> = vs
        .iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": gvs, "preferredVersion": gvs[0]}),
    ))
}

#[allow(clippy::too_many_arguments)]
async fn dispatch(
    api: &Api,
    group: &str,
    version: &str,
    segs: &[&str],
    method: Method,
    headers: &HeaderMap,
    q: &ListQuery,
    body: Bytes,
) -> ApiResult {
    let target = parse_target(group, version, segs)?;
    if let Some(fs) = &q.field_selector {
        // Refuse an unsupported field up front, even when nothing would be compared.
        field_matches(target.resource, &Value::Null, fs)?;
    }
    match (&method, &target.name) {
        (&Method::GET, None) if is_true(&q.watch) => {
            let labels = label_selector(q)?;
            crate::watch::watch(
                &api.store,
                crate::watch::WatchRequest {
                    resource: target.resource,
                    prefix: target
                        .resource
                        .namespace_prefix(target.namespace.as_deref()),
                    resource_version: q.resource_version.clone(),
                    labels,
                    fields: q.field_selector.clone(),
                    timeout: q.timeout_seconds.map(std::time::Duration::from_secs),
                    bookmarks: is_true(&q.allow_watch_bookmarks),
                    send_initial_events: is_true(&q.send_initial_events),
                    table: wants_table(headers),
                },
            )
            .await
        }
        (&Method::GET, None) => list(api, &target, q, headers).await,
        (&Method::GET, Some(name)) if target.sub == Some(Sub::Log) => {
            let current = read_current(api, &target, name).await?;
            let pod = served(target.resource, &current)?;
            let query = crate::pods::LogQuery {
                container: q.container.clone(),
                follow: q.follow.clone(),
                previous: q.previous.clone(),
                timestamps: q.timestamps.clone(),
                tail_lines: q.tail_lines,
                since_seconds: q.since_seconds,
                limit_bytes: q.limit_bytes,
            };
            crate::pods::logs(api.pods.as_deref(), &pod, query).await
        }
        (_, Some(_)) if target.sub == Some(Sub::Log) => Err(ApiError::method_not_allowed(
            &format!("{method} on pods/log"),
        )),
        (&Method::POST, Some(name)) if target.sub == Some(Sub::Eviction) => {
            evict(api, &target, name, headers, &body, q).await
        }
        (_, Some(_)) if target.sub == Some(Sub::Eviction) => Err(ApiError::method_not_allowed(
            &format!("{method} on pods/eviction"),
        )),
        (&Method::GET, Some(name)) if target.sub == Some(Sub::Scale) => {
            let current = read_current(api, &target, name).await?;
            Ok(json_response(
                StatusCode::OK,
                &scale_view(&served(target.resource, &current)?),
            ))
        }
        (&Method::GET, Some(name)) => get_one(api, &target, name, headers).await,
        (&Method::POST, None) if target.sub.is_none() => {
            create(api, &target, headers, &body, &WriteOpts::from_query(q)?).await
        }
        (&Method::PUT, Some(name)) => {
            update(
                api,
                &target,
                name,
                headers,
                &body,
                &WriteOpts::from_query(q)?,
            )
            .await
        }
        (&Method::PATCH, Some(name)) => {
            patch(
                api,
                &target,
                name,
                headers,
                &body,
                &WriteOpts::from_query(q)?,
            )
            .await
        }
        (&Method::DELETE, Some(name)) if target.sub.is_none() => {
            delete(api, &target, name, headers, &body, q).await
        }
        (&Method::DELETE, None) => delete_collection(api, &target, headers, &body, q).await,
        _ => Err(ApiError::method_not_allowed(&format!(
            "{method} on this path"
        ))),
    }
}

/// The stored JSON with `"resourceVersion":"N"` spliced into its top-level metadata. Stored
/// objects are serialised with sorted keys, so the first `"metadata":{` is the top-level one
/// (only `apiVersion` and `kind`, plain strings, come before it). None if it is not there.
fn served_bytes(kv: &KeyValue) -> Option<Vec<u8>> {
    const NEEDLE: &[u8] = b"\"metadata\":{";
    let v = &kv.value;
    let at = v.windows(NEEDLE.len()).position(|w| w == NEEDLE)? + NEEDLE.len();
    // Sanity: the text before it must hold no other object (apiVersion, kind only).
    if v[1..at - NEEDLE.len()].contains(&b'{') {
        return None;
    }
    let rv = format!("\"resourceVersion\":\"{}\"", kv.mod_revision);
    let mut out = Vec::with_capacity(v.len() + rv.len() + 1);
    out.extend_from_slice(&v[..at]);
    out.extend_from_slice(rv.as_bytes());
    if v.get(at) != Some(&b'}') {
        out.push(b',');
    }
    out.extend_from_slice(&v[at..]);
    Some(out)
}

/// The object as served: the stored JSON with `resourceVersion` set from the store.
pub(crate) fn served(r: &Resource, kv: &KeyValue) -> Result<Value, ApiError> {
    let mut obj: Value = serde_json::from_slice(&kv.value)
        .map_err(|e| ApiError::internal(format!("stored object {} is not JSON: {e}", kv.key)))?;
    obj["apiVersion"] = json!(r.api_version());
    obj["kind"] = json!(r.kind);
    obj["metadata"]["resourceVersion"] = json!(kv.mod_revision.to_string());
    Ok(obj)
}

fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("as=Table"))
}

/// Filters `metadata.name` / `metadata.namespace` field selectors (`a=b`, `a==b`, `a!=b`).
/// Where a field selector's field lives in objects of `r`: the metadata fields every kind
/// has, plus the kind-specific ones the apiserver supports (what kubectl, kubelets and
/// controllers select on).
fn selectable_field(r: &Resource, field: &str) -> Option<&'static str> {
    Some(match (r.plural, field) {
        (_, "metadata.name") => "/metadata/name",
        (_, "metadata.namespace") if r.namespaced => "/metadata/namespace",
        ("pods", "spec.nodeName") => "/spec/nodeName",
        ("pods", "spec.restartPolicy") => "/spec/restartPolicy",
        ("pods", "spec.schedulerName") => "/spec/schedulerName",
        ("pods", "spec.serviceAccountName") => "/spec/serviceAccountName",
        ("pods", "spec.hostNetwork") => "/spec/hostNetwork",
        ("pods", "status.phase") => "/status/phase",
        ("pods", "status.podIP") => "/status/podIP",
        ("pods", "status.nominatedNodeName") => "/status/nominatedNodeName",
        ("events", "involvedObject.kind") if r.group.is_empty() => "/involvedObject/kind",
        ("events", "involvedObject.namespace") if r.group.is_empty() => "/involvedObject/namespace",
        ("events", "involvedObject.name") if r.group.is_empty() => "/involvedObject/name",
        ("events", "involvedObject.uid") if r.group.is_empty() => "/involvedObject/uid",
        ("events", "involvedObject.apiVersion") if r.group.is_empty() => {
            "/involvedObject/apiVersion"
        }
        ("events", "involvedObject.resourceVersion") if r.group.is_empty() => {
            "/involvedObject/resourceVersion"
        }
        ("events", "involvedObject.fieldPath") if r.group.is_empty() => "/involvedObject/fieldPath",
        ("events", "reason") => "/reason",
        ("events", "type") => "/type",
        ("events", "reportingComponent") => "/reportingComponent",
        ("events", "source") if r.group.is_empty() => "/source/component",
        ("events", "regarding.kind") => "/regarding/kind",
        ("events", "regarding.name") => "/regarding/name",
        ("events", "regarding.namespace") => "/regarding/namespace",
        ("events", "regarding.uid") => "/regarding/uid",
        ("secrets", "type") => "/type",
        ("namespaces", "status.phase") => "/status/phase",
        ("nodes", "spec.unschedulable") => "/spec/unschedulable",
        ("replicasets" | "replicationcontrollers", "status.replicas") => "/status/replicas",
        ("jobs", "status.successful") => "/status/successful",
        ("services", "spec.clusterIP") => "/spec/clusterIP",
        ("services", "spec.type") => "/spec/type",
        _ => return None,
    })
}

/// Whether `obj` (of resource `r`) matches a field selector (`a=b,c!=d`).
pub(crate) fn field_matches(r: &Resource, obj: &Value, selector: &str) -> Result<bool, ApiError> {
    for part in selector.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, want, negate) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            (f, v, false)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid field selector {part:?}"
            )));
        };
        let field = field.trim();
        let pointer = selectable_field(r, field)
            .ok_or_else(|| ApiError::bad_request(format!("field label not supported: {field}")))?;
        // Unset fields compare as their zero value, as in the apiserver.
        let actual = match obj.at(pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Bool(b)) => b.to_string(),
            Some(Value::Number(n)) => n.to_string(),
            _ if field == "spec.hostNetwork" || field == "spec.unschedulable" => "false".into(),
            _ => String::new(),
        };
        if (actual == want.trim()) == negate {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A list continue token: where the next page starts and the revision of the first page.
#[derive(serde::Serialize, serde::Deserialize)]
struct ContinueToken {
    rv: u64,
    start: String,
}

fn encode_continue(token: &ContinueToken) -> String {
    serde_json::to_vec(token)
        .unwrap_or_default()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_continue(s: &str, prefix: &str) -> Result<ContinueToken, ApiError> {
    let bad = || ApiError::bad_request("continue key is not valid: the token is malformed");
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return Err(bad());
    }
    let bytes = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    let token: ContinueToken = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    // A token from another list must not read outside this one.
    if !token.start.starts_with(prefix) {
        return Err(bad());
    }
    Ok(token)
}

/// LIST with selectors and paging. Pages after the first are read from the current state
/// (the store keeps no old versions to read at the first page's revision); each key is still
/// returned at most once, in key order.
async fn list(api: &Api, t: &Target, q: &ListQuery, headers: &HeaderMap) -> ApiResult {
    // Listing in a namespace that does not exist returns an empty list, as Kubernetes does.
    let selector = label_selector(q)?;
    let prefix = t.resource.namespace_prefix(t.namespace.as_deref());
    let limit = q.limit.filter(|l| *l > 0).map(|l| l as usize);
    let token = match q.continue_token.as_deref().filter(|c| !c.is_empty()) {
        Some(c) => Some(decode_continue(c, &prefix)?),
        None => None,
    };
    let mut start = token
        .as_ref()
        .map_or_else(|| prefix.clone(), |t| t.start.clone());
    // Read in chunks so a selective list with a small limit does not load everything.
    let chunk = limit.map_or(usize::MAX, |l| (l + 1).max(256));
    // Without selectors or a Table, items go out as stored, with only their resourceVersion
    // spliced in: no parse and re-serialisation of every object of a large list.
    let raw = !wants_table(headers)
        && q.label_selector.as_deref().is_none_or(str::is_empty)
        && q.field_selector.as_deref().is_none_or(str::is_empty)
        && t.resource.group != "autoscaling";
    let mut raw_items: Vec<Vec<u8>> = Vec::new();
    let mut items = Vec::new();
    let mut next = None;
    let mut revision = None;
    'pages: loop {
        let range = api
            .store
            .range_from(&prefix, &start, chunk, Read::Linearizable)
            .await?;
        revision.get_or_insert(range.revision);
        let full = range.kvs.len() >= chunk;
        for kv in &range.kvs {
            if raw {
                if limit.is_some_and(|l| raw_items.len() >= l) {
                    next = Some(kv.key.clone());
                    break 'pages;
                }
                match served_bytes(kv) {
                    Some(bytes) => raw_items.push(bytes),
                    None => raw_items.push(
                        serde_json::to_vec(&served(t.resource, kv)?)
                            .map_err(|e| ApiError::internal(e.to_string()))?,
                    ),
                }
                continue;
            }
            let obj = served(t.resource, kv)?;
            if !selector.matches(&meta::labels_of(&obj)) {
                continue;
            }
            if let Some(fs) = &q.field_selector
                && !field_matches(t.resource, &obj, fs)?
            {
                continue;
            }
            if limit.is_some_and(|l| items.len() >= l) {
                next = Some(kv.key.clone());
                break 'pages;
            }
            items.push(obj);
        }
        match range.kvs.last() {
            Some(last) if full => start = format!("{}\0", last.key),
            _ => break,
        }
    }
    let revision = token
        .as_ref()
        .map_or(revision.unwrap_or_default(), |t| t.rv)
        .to_string();
    let continue_token = next.map(|start| {
        encode_continue(&ContinueToken {
            rv: revision.parse().unwrap_or_default(),
            start,
        })
    });
    if wants_table(headers) {
        let mut table = crate::table::table(t.resource, &items, &revision);
        if let Some(c) = &continue_token {
            table["metadata"]["continue"] = json!(c);
        }
        return Ok(json_response(StatusCode::OK, &table));
    }
    let mut metadata = json!({"resourceVersion": revision});
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    if raw {
        let head = json!({
            "kind": format!("{}List", t.resource.kind),
            "apiVersion": t.resource.api_version(),
            "metadata": metadata,
        });
        let mut out = serde_json::to_vec(&head).map_err(|e| ApiError::internal(e.to_string()))?;
        // `{...}` → `{...,"items":[a,b]}`
        out.pop();
        out.extend_from_slice(b",\"items\":[");
        for (i, item) in raw_items.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(item);
        }
        out.extend_from_slice(b"]}\n");
        let mut resp = (StatusCode::OK, out).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return Ok(resp);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", t.resource.kind),
            "apiVersion": t.resource.api_version(),
            "metadata": metadata,
            "items": items,
        }),
    ))
}

async fn get_one(api: &Api, t: &Target, name: &str, headers: &HeaderMap) -> ApiResult {
    let key = t.resource.key(t.namespace.as_deref(), name);
    let got = api.store.get(&key, Read::Linearizable).await?;
    let kv = got
        .kv
        .ok_or_else(|| ApiError::not_found(t.resource, name))?;
    let obj = served(t.resource, &kv)?;
    if wants_table(headers) && t.sub.is_none() {
        // `kubectl get deploy web` and `helm status` ask for one object as a Table.
        let rv = kv.mod_revision.to_string();
        return Ok(json_response(
            StatusCode::OK,
            &crate::table::table(t.resource, &[obj], &rv),
        ));
    }
    Ok(json_response(StatusCode::OK, &obj))
}

/// Parses a request body: JSON, YAML, or the Kubernetes protobuf envelope that typed clients
/// (kubectl's generators, helm) send for built-in kinds.
fn parse_body(headers: &HeaderMap, body: &Bytes) -> Result<Value, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let media = content_type.split(';').next().unwrap_or("").trim();
    let value: Value = match media {
        "application/json" | "" => serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!("the request body is not valid JSON: {e}"))
        })?,
        "application/yaml" => {
            let text = std::str::from_utf8(body)
                .map_err(|_| ApiError::bad_request("the request body is not UTF-8 YAML"))?;
            serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
        "application/vnd.kubernetes.protobuf" => crate::protobuf::decode_request(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding protobuf: {e}")))?,
        _ => return Err(ApiError::unsupported_media_type(content_type)),
    };
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    Ok(value)
}

fn cause(field: &str, message: impl Into<String>) -> StatusCause {
    StatusCause {
        reason: "FieldValueInvalid".into(),
        message: message.into(),
        field: field.into(),
    }
}

/// Checks what the generic layer can check for any kind: apiVersion/kind, name, namespace.
/// Returns the invalid fields, to be reported with the kind's own validation.
fn validate_envelope(
    r: &Resource,
    obj: &Value,
    path_ns: Option<&str>,
    name: &str,
) -> Result<Vec<StatusCause>, ApiError> {
    let mut causes = Vec::new();
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str)
        && av != r.api_version()
        // Both autoscaling versions are stored together.
        && !(r.group == "autoscaling" && av.starts_with("autoscaling/"))
    {
        causes.push(cause(
            "apiVersion",
            format!("must be {} for this endpoint, not {av}", r.api_version()),
        ));
    }
    if let Some(kind) = obj.get("kind").and_then(Value::as_str)
        && kind != r.kind
    {
        causes.push(cause("kind", format!("must be {}, not {kind}", r.kind)));
    }
    let name_error = if r.plural == "namespaces" {
        meta::dns1123_label_errors(name)
    } else {
        meta::dns1123_subdomain_errors(name)
    };
    if let Some(e) = name_error {
        causes.push(cause(
            "metadata.name",
            format!("Invalid value: {name:?}: {e}"),
        ));
    }
    if r.namespaced
        && let Some(ns) = obj.at("/metadata/namespace").and_then(Value::as_str)
        && Some(ns) != path_ns
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    Ok(causes)
}

async fn ensure_namespace(
    api: &Api,
    r: &Resource,
    ns: Option<&str>,
    name: &str,
) -> Result<(), ApiError> {
    if !r.namespaced {
        return Ok(());
    }
    let ns = ns.ok_or_else(|| {
        ApiError::bad_request(format!("{} must be created in a namespace", r.plural))
    })?;
    let key = resources::find("", "v1", "namespaces")
        .map(|n| n.key(None, ns))
        .unwrap_or_default();
    let Some(kv) = api.store.get(&key, Read::Linearizable).await?.kv else {
        return Err(ApiError::namespace_not_found(ns));
    };
    let namespace: Value = serde_json::from_slice(&kv.value).unwrap_or_default();
    if crate::lifecycle::is_deleting(&namespace) {
        return Err(ApiError::forbidden(
            r,
            name,
            &format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        ));
    }
    Ok(())
}

fn encode_object(r: &Resource, name: &str, obj: &Value) -> Result<Vec<u8>, ApiError> {
    let bytes = serde_json::to_vec(obj).map_err(|e| ApiError::internal(e.to_string()))?;
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::too_large(format!(
            "{} \"{name}\" is {} bytes; objects are limited to {MAX_OBJECT_BYTES} bytes",
            r.qualified_plural(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// How a write handles fields the schema does not know (`fieldValidation`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

/// The write options every mutating request may carry.
struct WriteOpts {
    validation: FieldValidation,
    manager: Option<String>,
    force: bool,
    dry_run: bool,
    /// In-process writers only: more comparisons (a controller's shard lease, its fencing)
    /// and more operations (allocation records) in the write's transaction.
    fence: Vec<Compare>,
    also: Vec<Op>,
}

impl WriteOpts {
    fn from_query(q: &ListQuery) -> Result<WriteOpts, ApiError> {
        let validation = match q.field_validation.as_deref() {
            None | Some("" | "Warn") => FieldValidation::Warn,
            Some("Ignore") => FieldValidation::Ignore,
            Some("Strict") => FieldValidation::Strict,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation parameter unsupported: {other}. Supported values: \"Ignore\", \"Warn\", \"Strict\""
                )));
            }
        };
        let dry_run = match q.dry_run.as_deref() {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "Unsupported dryRun value: {other:?}; supported values: \"All\""
                )));
            }
        };
        Ok(WriteOpts {
            validation,
            manager: q.field_manager.clone().filter(|m| !m.is_empty()),
            force: is_true(&q.force),
            dry_run,
            fence: Vec::new(),
            also: Vec::new(),
        })
    }
}

/// Schema check, defaulting and validation of an object about to be written (`old` on
/// updates). Returns the warnings to send back.
fn admit(
    r: &Resource,
    obj: &mut Value,
    old: Option<&Value>,
    opts: &WriteOpts,
    mut causes: Vec<StatusCause>,
) -> Result<Vec<String>, ApiError> {
    let api_version = r.api_version();
    let mut warnings = Vec::new();
    if let Some(findings) = crate::openapi::OPENAPI.check(&api_version, r.kind, obj) {
        if let Some((path, expected, found)) = findings.wrong_type.first() {
            return Err(ApiError::bad_request(format!(
                "{kind} in version \"{version}\" cannot be handled as a {kind}: json: cannot unmarshal {found} into Go struct field {kind}.{path} of type {expected}",
                kind = r.kind,
                version = r.version,
            )));
        }
        let unknown: Vec<String> = findings
            .unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match opts.validation {
            FieldValidation::Strict if !unknown.is_empty() => {
                return Err(ApiError::bad_request(format!(
                    "{kind} in version \"{version}\" cannot be handled as a {kind}: strict decoding error: {}",
                    unknown.join(", "),
                    kind = r.kind,
                    version = r.version,
                )));
            }
            FieldValidation::Warn => warnings = unknown,
            _ => {}
        }
    }
    crate::defaults::apply_defaults(&api_version, r.kind, obj);
    causes.extend(crate::validate::validate(&api_version, r.kind, obj, old));
    if !causes.is_empty() {
        let name = obj
            .at("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        return Err(ApiError::invalid(r, &name, causes));
    }
    Ok(warnings)
}

/// A JSON response with Kubernetes `Warning` headers (kubectl prints them).
fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {}", serde_json::Value::String(w.clone()));
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append(header::WARNING, v);
        }
    }
    resp
}

/// The status an object starts with, whatever the client sent (the apiserver's
/// PrepareForCreate): status is written through the subresource, by controllers.
fn initial_status(r: &Resource, obj: &mut Value) {
    if !r.has_status() || matches!(r.plural, "namespaces" | "nodes") {
        return;
    }
    obj["status"] = match r.plural {
        "pods" => json!({"phase": "Pending", "qosClass": qos_class(obj)}),
        "services" | "ingresses" => json!({"loadBalancer": {}}),
        "persistentvolumeclaims" | "persistentvolumes" => json!({"phase": "Pending"}),
        // The Go status struct's counters are not omitempty: a new budget shows zeros.
        "poddisruptionbudgets" => json!({
            "disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0
        }),
        _ => json!({}),
    };
}

/// A pod's QoS class from its containers' requests and limits (after defaulting, where
/// requests default to limits).
fn qos_class(pod: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .filter_map(|k| pod.at(&format!("/spec/{k}")).and_then(Value::as_array))
        .flatten()
        .collect();
    let mut any = false;
    let mut guaranteed = true;
    for c in containers {
        let requests = c.at("/resources/requests").and_then(Value::as_object);
        let limits = c.at("/resources/limits").and_then(Value::as_object);
        if requests.is_some_and(|m| !m.is_empty()) || limits.is_some_and(|m| !m.is_empty()) {
            any = true;
        }
        for res in ["cpu", "memory"] {
            let limit = limits.and_then(|m| m.get(res));
            let request = requests.and_then(|m| m.get(res));
            if limit.is_none() || request != limit {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Kinds whose controllers report `status.observedGeneration`, so the apiserver keeps
/// `metadata.generation` (bumped on spec changes) for them.
fn tracks_generation(r: &Resource) -> bool {
    matches!(
        r.plural,
        "deployments"
            | "replicasets"
            | "statefulsets"
            | "daemonsets"
            | "replicationcontrollers"
            | "jobs"
            | "cronjobs"
            | "ingresses"
            | "horizontalpodautoscalers"
            | "poddisruptionbudgets"
    )
}

fn generated_name(prefix: &str) -> String {
    const CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect();
    format!("{prefix}{suffix}")
}

/// The manager a write is recorded under: `fieldManager`, else the client's program name
/// from its User-Agent, as the apiserver does.
fn manager_name(opts: &WriteOpts, headers: &HeaderMap) -> String {
    if let Some(m) = &opts.manager {
        return m.clone();
    }
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .and_then(|ua| ua.split('/').next())
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown")
        .chars()
        .take(128)
        .collect()
}

async fn create(
    api: &Api,
    t: &Target,
    headers: &HeaderMap,
    body: &Bytes,
    opts: &WriteOpts,
) -> ApiResult {
    let obj = parse_body(headers, body)?;
    let manager = manager_name(opts, headers);
    let (written, warnings) = create_object(api, t, obj, opts, &manager, None).await?;
    Ok(with_warnings(
        json_response(StatusCode::CREATED, &written),
        &warnings,
    ))
}

/// Creates `obj` (admission, metadata, managedFields) unless it exists. `applied` is the
/// object already built by a server-side apply, which records its own managedFields.
async fn create_object(
    api: &Api,
    t: &Target,
    mut obj: Value,
    opts: &WriteOpts,
    manager: &str,
    applied: Option<()>,
) -> Result<(Value, Vec<String>), ApiError> {
    let r = t.resource;
    let ns = t.namespace.clone();
    let given = obj
        .at("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    let prefix = obj
        .at("/metadata/generateName")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut name = match (&given, &prefix) {
        (Some(n), _) => n.clone(),
        (None, Some(p)) => generated_name(p),
        (None, None) => {
            return Err(ApiError::invalid(
                r,
                "",
                vec![cause(
                    "metadata.name",
                    "Required value: name or generateName is required",
                )],
            ));
        }
    };
    let envelope = validate_envelope(r, &obj, ns.as_deref(), &name)?;
    ensure_namespace(api, r, ns.as_deref(), &name).await?;

    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let now = meta::rfc3339(meta::now_secs());
    {
        let m = &mut obj["metadata"];
        if let Some(ns) = &ns
            && r.namespaced
        {
            m["namespace"] = json!(ns);
        }
        m["uid"] = json!(meta::new_uid());
        m["creationTimestamp"] = json!(now);
        if tracks_generation(r) {
            m["generation"] = json!(1);
        } else if let Some(map) = m.as_object_mut() {
            map.remove("generation");
        }
        if let Some(map) = m.as_object_mut() {
            map.remove("resourceVersion");
            map.remove("deletionTimestamp");
            map.remove("deletionGracePeriodSeconds");
            if applied.is_none() {
                // Clients cannot write ownership records; the server keeps them.
                map.remove("managedFields");
            }
        }
    }
    obj["apiVersion"] = json!(r.api_version());
    obj["kind"] = json!(r.kind);
    if r.plural == "namespaces" {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
        // Every namespace carries its name as a label, so selectors can pick namespaces.
        match obj["metadata"].get_mut("labels") {
            Some(Value::Object(labels)) => {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            None | Some(Value::Null) => {
                obj["metadata"]["labels"] = json!({"kubernetes.io/metadata.name": name});
            }
            // Left for admission to reject.
            Some(_) => {}
        }
    }
    obj["metadata"]["name"] = json!(name);
    let warnings = admit(r, &mut obj, None, opts, envelope)?;
    initial_status(r, &mut obj);
    if applied.is_none() {
        let api_version = r.api_version();
        crate::apply::record_update(
            &mut obj,
            None,
            &crate::apply::Writer {
                manager,
                api_version: &api_version,
                subresource: None,
                time: &now,
            },
        );
    }
    let causes = crate::alloc::assign(&api.store, &mut obj, None).await?;
    if !causes.is_empty() {
        return Err(ApiError::invalid(r, &name, causes));
    }
    // A generated name may collide; like the apiserver, try a few others.
    for _ in 0..8 {
        obj["metadata"]["name"] = json!(name);
        let key = r.key(ns.as_deref(), &name);
        let bytes = encode_object(r, &name, &obj)?;
        if opts.dry_run {
            if api.store.get(&key, Read::Linearizable).await?.kv.is_some() {
                return Err(ApiError::already_exists(r, &name));
            }
            return Ok((obj, warnings));
        }
        let (mut compare, mut success) = crate::alloc::ops(&key, Some(&obj), None);
        compare.push(Compare::Missing { key: key.clone() });
        compare.extend(opts.fence.iter().cloned());
        success.push(Op::Put {
            key: key.clone(),
            value: bytes,
        });
        success.extend(opts.also.iter().cloned());
        let resp = api
            .store
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await?;
        if resp.succeeded {
            obj["metadata"]["resourceVersion"] = json!(resp.revision.to_string());
            return Ok((obj, warnings));
        }
        if api.store.get(&key, Read::Linearizable).await?.kv.is_none() {
            // The object is free, so a concurrent Service took an IP or port just chosen.
            return Err(ApiError::conflict_msg(
                r,
                &name,
                "a cluster IP or node port chosen for this Service was allocated concurrently; please retry",
            ));
        }
        match (&given, &prefix) {
            (None, Some(p)) => name = generated_name(p),
            _ => break,
        }
    }
    Err(ApiError::already_exists(r, &name))
}

async fn update(
    api: &Api,
    t: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    opts: &WriteOpts,
) -> ApiResult {
    let r = t.resource;
    let obj = parse_body(headers, body)?;
    let body_name = obj
        .at("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("");
    if body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name:?}) does not match the name on the URL ({name:?})"
        )));
    }
    let current = read_current(api, t, name).await?;
    let old = served(r, &current)?;
    // A stale resourceVersion in the body is a conflict, whatever part is written.
    if let Some(rv) = obj.at("/metadata/resourceVersion").and_then(Value::as_str)
        && !rv.is_empty()
        && rv != current.mod_revision.to_string()
    {
        return Err(ApiError::conflict(r, name));
    }
    let new = scoped(r, t.sub, &old, obj, name)?;
    let manager = manager_name(opts, headers);
    match replace_object(api, t, name, new, &current, opts, Some(&manager)).await? {
        Some((written, warnings)) => Ok(with_warnings(respond(t, &written), &warnings)),
        None => Err(ApiError::conflict(r, name)),
    }
}

/// What a write through `sub` may change: the main resource leaves `.status` alone (for kinds
/// with a status subresource), `status` changes only `.status`, `scale` only `.spec.replicas`.
fn scoped(
    r: &Resource,
    sub: Option<Sub>,
    old: &Value,
    new: Value,
    name: &str,
) -> Result<Value, ApiError> {
    match sub {
        Some(Sub::Log) => Err(ApiError::method_not_allowed("writes to pods/log")),
        Some(Sub::Eviction) => Err(ApiError::method_not_allowed(
            "updates of pods/eviction (POST an Eviction)",
        )),
        None if r.has_status() => {
            let mut obj = new;
            match old.get("status") {
                Some(status) => obj["status"] = status.clone(),
                None => {
                    if let Some(m) = obj.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            Ok(obj)
        }
        None => Ok(new),
        Some(Sub::Status) => {
            let mut obj = old.clone();
            obj["status"] = new.get("status").cloned().unwrap_or(Value::Null);
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            Ok(obj)
        }
        Some(Sub::Scale) => {
            let replicas = new
                .at("/spec/replicas")
                .and_then(Value::as_i64)
                .filter(|n| *n >= 0 && *n <= i64::from(i32::MAX))
                .ok_or_else(|| {
                    ApiError::invalid(
                        r,
                        name,
                        vec![cause("spec.replicas", "must be a non-negative integer")],
                    )
                })?;
            let mut obj = old.clone();
            obj["spec"]["replicas"] = json!(replicas);
            Ok(obj)
        }
    }
}

/// The autoscaling/v1 `Scale` view of a scalable object.
fn scale_view(obj: &Value) -> Value {
    let selector = obj
        .at("/spec/selector/matchLabels")
        .or_else(|| obj.at("/spec/selector"))
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| format!("{k}={v}")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    let m = &obj["metadata"];
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
            "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"],
        },
        "spec": {"replicas": obj.at("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.at("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// The response body of a write: the object, or its Scale for the scale subresource.
fn respond(t: &Target, written: &Value) -> Response {
    match t.sub {
        Some(Sub::Scale) => json_response(StatusCode::OK, &scale_view(written)),
        _ => json_response(StatusCode::OK, written),
    }
}

async fn read_current(api: &Api, t: &Target, name: &str) -> Result<KeyValue, ApiError> {
    let key = t.resource.key(t.namespace.as_deref(), name);
    api.store
        .get(&key, Read::Linearizable)
        .await?
        .kv
        .ok_or_else(|| ApiError::not_found(t.resource, name))
}

/// Writes `obj` over `current` if nobody changed it since; `None` if someone did.
async fn replace_object(
    api: &Api,
    t: &Target,
    name: &str,
    mut obj: Value,
    current: &KeyValue,
    opts: &WriteOpts,
    manager: Option<&str>,
) -> Result<Option<(Value, Vec<String>)>, ApiError> {
    let r = t.resource;
    let envelope = validate_envelope(r, &obj, t.namespace.as_deref(), name)?;
    if obj.at("/metadata/name").and_then(Value::as_str) != Some(name) {
        return Err(ApiError::invalid(
            r,
            name,
            vec![cause("metadata.name", "field is immutable")],
        ));
    }
    let old = served(r, current)?;
    // An update that names a resourceVersion must be based on the current one.
    if let Some(rv) = obj.at("/metadata/resourceVersion").and_then(Value::as_str)
        && !rv.is_empty()
        && rv != current.mod_revision.to_string()
    {
        return Err(ApiError::conflict(r, name));
    }
    // Server-owned metadata is kept from the stored object.
    for field in [
        "uid",
        "creationTimestamp",
        "namespace",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    ] {
        match old["metadata"].get(field) {
            Some(v) => obj["metadata"][field] = v.clone(),
            None => {
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove(field);
                }
            }
        }
    }
    let added = crate::lifecycle::added_finalizers(&old, &obj);
    if crate::lifecycle::is_deleting(&old) && !added.is_empty() {
        return Err(ApiError::invalid(
            r,
            name,
            vec![StatusCause {
                reason: "FieldValueForbidden".into(),
                message: format!(
                    "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"
                ),
                field: "metadata.finalizers".into(),
            }],
        ));
    }
    let warnings = admit(r, &mut obj, Some(&old), opts, envelope)?;
    let api_version = r.api_version();
    let now = meta::rfc3339(meta::now_secs());
    // A server-side apply (no `manager` here) has recorded its own ownership.
    if let Some(manager) = manager {
        // Ownership records are the server's; what the client sent is replaced.
        if let Some(mf) = old.at("/metadata/managedFields") {
            obj["metadata"]["managedFields"] = mf.clone();
        } else if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        crate::apply::record_update(
            &mut obj,
            Some(&old),
            &crate::apply::Writer {
                manager,
                api_version: &api_version,
                subresource: t.sub.map(Sub::name),
                time: &now,
            },
        );
    }
    if tracks_generation(r) {
        let generation = old
            .at("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = obj.get("spec") != old.get("spec");
        obj["metadata"]["generation"] = json!(if spec_changed {
            generation + 1
        } else {
            generation
        });
    } else if let Some(map) = obj["metadata"].as_object_mut() {
        map.remove("generation");
    }
    if let Some(map) = obj["metadata"].as_object_mut() {
        map.remove("resourceVersion");
    }
    obj["apiVersion"] = json!(r.api_version());
    obj["kind"] = json!(r.kind);
    let causes = crate::alloc::assign(&api.store, &mut obj, Some(&old)).await?;
    if !causes.is_empty() {
        return Err(ApiError::invalid(r, name, causes));
    }
    let bytes = encode_object(r, name, &obj)?;
    if opts.dry_run {
        obj["metadata"]["resourceVersion"] = json!(current.mod_revision.to_string());
        return Ok(Some((obj, warnings)));
    }
    // The update that removes the last finalizer of an object being deleted deletes it.
    let gone = crate::lifecycle::is_deleting(&old) && !crate::lifecycle::has_finalizers(&obj);
    let (mut compare, mut success) =
        crate::alloc::ops(&current.key, (!gone).then_some(&obj), Some(&old));
    compare.push(Compare::ModRevision {
        key: current.key.clone(),
        op: flotilla_consensus::CmpOp::Equal,
        revision: current.mod_revision,
    });
    compare.extend(opts.fence.iter().cloned());
    success.push(if gone {
        Op::Delete {
            key: current.key.clone(),
        }
    } else {
        Op::Put {
            key: current.key.clone(),
            value: bytes,
        }
    });
    success.extend(opts.also.iter().cloned());
    let resp = api
        .store
        .txn(TxnRequest {
            compare,
            success,
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Ok(None);
    }
    obj["metadata"]["resourceVersion"] = json!(resp.revision.to_string());
    Ok(Some((obj, warnings)))
}

/// PATCH: merge, JSON or strategic merge, applied to the current object and written back
/// conditionally; retried when a concurrent writer wins, unless the patch pins a
/// resourceVersion. Apply patches go to [`server_side_apply`].
async fn patch(
    api: &Api,
    t: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    opts: &WriteOpts,
) -> ApiResult {
    let r = t.resource;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_owned();
    let apply: fn(&mut Value, &Value) -> Result<(), String> = match content_type.as_str() {
        "application/merge-patch+json" => |doc, p| {
            crate::patch::merge_patch(doc, p);
            Ok(())
        },
        "application/strategic-merge-patch+json" => |doc, p| {
            crate::patch::strategic_merge(doc, p);
            Ok(())
        },
        "application/json-patch+json" => crate::patch::json_patch,
        "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
            return server_side_apply(api, t, name, body, opts).await;
        }
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    let patch: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the patch is not valid JSON: {e}")))?;
    let pinned = patch.at("/metadata/resourceVersion").is_some();
    let manager = manager_name(opts, headers);
    for _ in 0..8 {
        let current = read_current(api, t, name).await?;
        let old = served(r, &current)?;
        // A patch applies to what the path shows: the object, or its Scale.
        let mut view = match t.sub {
            Some(Sub::Scale) => scale_view(&old),
            _ => old.clone(),
        };
        apply(&mut view, &patch)
            .map_err(|e| ApiError::invalid(r, name, vec![cause("patch", e)]))?;
        if let Some(rv) = view.at("/metadata/resourceVersion").and_then(Value::as_str)
            && pinned
            && rv != current.mod_revision.to_string()
        {
            return Err(ApiError::conflict(r, name));
        }
        let mut obj = scoped(r, t.sub, &old, view, name)?;
        // Checked above; the write itself is conditional on the revision it read.
        obj["metadata"]["resourceVersion"] = json!(current.mod_revision.to_string());
        if let Some((written, warnings)) =
            replace_object(api, t, name, obj, &current, opts, Some(&manager)).await?
        {
            return Ok(with_warnings(respond(t, &written), &warnings));
        }
        if pinned {
            break;
        }
    }
    Err(ApiError::conflict(r, name))
}

/// `application/apply-patch+yaml`: merges the applied configuration under `fieldManager`,
/// creating the object if it does not exist (201), refusing conflicts unless `force`.
async fn server_side_apply(
    api: &Api,
    t: &Target,
    name: &str,
    body: &Bytes,
    opts: &WriteOpts,
) -> ApiResult {
    let r = t.resource;
    let Some(manager) = opts.manager.as_deref() else {
        return Err(ApiError::invalid_options(
            "fieldManager",
            "Required value: is required for apply patch",
        ));
    };
    if t.sub.is_some() {
        return Err(ApiError::method_not_allowed(
            "apply on a subresource (apply to the object itself)",
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("the apply patch is not UTF-8 YAML or JSON"))?;
    let config: Value = serde_json::from_str(text).or_else(|_| {
        serde_saphyr::from_str::<Value>(text)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
    })?;
    if !config.is_object() {
        return Err(ApiError::bad_request(
            "the apply patch must be an object with apiVersion and kind",
        ));
    }
    let mut causes = Vec::new();
    for field in ["apiVersion", "kind"] {
        if config
            .get(field)
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(StatusCause {
                reason: "FieldValueRequired".into(),
                message: "Required value: apply patches must name apiVersion and kind".into(),
                field: field.into(),
            });
        }
    }
    if let Some(n) = config.at("/metadata/name").and_then(Value::as_str)
        && n != name
    {
        causes.push(cause(
            "metadata.name",
            format!("Invalid value: {n:?}: must match the name on the URL ({name:?})"),
        ));
    }
    if !causes.is_empty() {
        return Err(ApiError::invalid(r, name, causes));
    }
    let api_version = r.api_version();
    for _ in 0..8 {
        let now = meta::rfc3339(meta::now_secs());
        let writer = crate::apply::Writer {
            manager,
            api_version: &api_version,
            subresource: None,
            time: &now,
        };
        let key = r.key(t.namespace.as_deref(), name);
        let Some(current) = api.store.get(&key, Read::Linearizable).await?.kv else {
            let mut obj = crate::apply::apply(None, &config, &writer, opts.force)
                .map_err(|c| ApiError::apply_conflict(r, name, &c))?;
            obj["metadata"]["name"] = json!(name);
            match create_object(api, t, obj, opts, manager, Some(())).await {
                Ok((written, warnings)) => {
                    return Ok(with_warnings(
                        json_response(StatusCode::CREATED, &written),
                        &warnings,
                    ));
                }
                // Created by someone else meanwhile: apply onto theirs.
                Err(e) if e.code() == 409 => continue,
                Err(e) => return Err(e),
            }
        };
        let old = served(r, &current)?;
        if let Some(rv) = config
            .at("/metadata/resourceVersion")
            .and_then(Value::as_str)
            && rv != current.mod_revision.to_string()
        {
            return Err(ApiError::conflict(r, name));
        }
        let merged = crate::apply::apply(Some(&old), &config, &writer, opts.force)
            .map_err(|c| ApiError::apply_conflict(r, name, &c))?;
        let mut obj = scoped(r, None, &old, merged, name)?;
        obj["metadata"]["resourceVersion"] = json!(current.mod_revision.to_string());
        if let Some((written, warnings)) =
            replace_object(api, t, name, obj, &current, opts, None).await?
        {
            return Ok(with_warnings(respond(t, &written), &warnings));
        }
    }
    Err(ApiError::conflict(r, name))
}

/// Writes an object marked for deletion over `current` (unless it changed meanwhile); the
/// written object is what a DELETE that does not remove the object yet answers with.
async fn write_marked(
    api: &Api,
    r: &Resource,
    name: &str,
    current: &KeyValue,
    mut marked: Value,
) -> Result<Value, ApiError> {
    if let Some(m) = marked["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    let resp = api
        .store
        .txn(TxnRequest {
            compare: vec![Compare::ModRevision {
                key: current.key.clone(),
                op: flotilla_consensus::CmpOp::Equal,
                revision: current.mod_revision,
            }],
            success: vec![Op::Put {
                key: current.key.clone(),
                value: encode_object(r, name, &marked)?,
            }],
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Err(ApiError::conflict(r, name));
    }
    marked["metadata"]["resourceVersion"] = json!(resp.revision.to_string());
    Ok(marked)
}

async fn delete(
    api: &Api,
    t: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    q: &ListQuery,
) -> ApiResult {
    let options = if body.is_empty() {
        None
    } else {
        Some(parse_body(headers, body)?)
    };
    let obj = delete_with(api, t, name, options.as_ref(), q).await?;
    Ok(json_response(StatusCode::OK, &obj))
}

/// A DELETE with its `DeleteOptions` (the body's win over the query's): preconditions, the
/// grace period of a pod, and the propagation policy, which becomes the garbage collector's
/// finalizers (`foregroundDeletion`, `orphan`) on the object. Returns the object as deleted
/// or as marked for deletion.
async fn delete_with(
    api: &Api,
    t: &Target,
    name: &str,
    options: Option<&Value>,
    q: &ListQuery,
) -> Result<Value, ApiError> {
    // Like the apiserver, a delete that pins no resourceVersion is retried when the object
    // changed under it (controllers write status all the time).
    let pinned = options
        .and_then(|o| o.at("/preconditions/resourceVersion"))
        .is_some();
    let mut tries = 0;
    loop {
        match delete_once(api, t, name, options, q).await {
            Err(e) if e.code() == 409 && !pinned && tries < 8 => tries += 1,
            other => return other,
        }
    }
}

async fn delete_once(
    api: &Api,
    t: &Target,
    name: &str,
    options: Option<&Value>,
    q: &ListQuery,
) -> Result<Value, ApiError> {
    let r = t.resource;
    let key = r.key(t.namespace.as_deref(), name);
    let current = read_current(api, t, name).await?;
    let mut grace = q.grace_period_seconds;
    let mut policy = q.propagation_policy.clone();
    let mut orphan_dependents = q.orphan_dependents;
    // DeleteOptions may carry preconditions on uid and resourceVersion.
    if let Some(options) = options {
        if let Some(g) = options.get("gracePeriodSeconds").and_then(Value::as_i64) {
            grace = Some(g);
        }
        if let Some(p) = options.get("propagationPolicy").and_then(Value::as_str) {
            policy = Some(p.to_owned());
        }
        if let Some(o) = options.get("orphanDependents").and_then(Value::as_bool) {
            orphan_dependents = Some(o);
        }
        let stored = served(r, &current)?;
        if let Some(uid) = options.at("/preconditions/uid").and_then(Value::as_str) {
            let actual = stored
                .at("/metadata/uid")
                .and_then(Value::as_str)
                .unwrap_or("");
            if uid != actual {
                return Err(ApiError::precondition_failed(
                    r,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"
                    ),
                ));
            }
        }
        if let Some(rv) = options
            .at("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            && rv != current.mod_revision.to_string()
        {
            return Err(ApiError::precondition_failed(
                r,
                name,
                &format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                    current.mod_revision
                ),
            ));
        }
    }
    let policy = crate::lifecycle::Propagation::from_options(policy.as_deref(), orphan_dependents)?;
    let stored = served(r, &current)?;
    let finalizers = crate::lifecycle::deletion_finalizers(&stored, policy);
    let mut marked = stored.clone();
    if let Some(f) = &finalizers {
        marked["metadata"]["finalizers"] = json!(f);
    }
    if r.plural == "pods"
        && let Some(grace) = crate::lifecycle::pod_grace_period(&stored, grace)
    {
        // A pod on a node is stopped by its kubelet, which then removes the object.
        if !crate::lifecycle::mark_pod_deleting(&mut marked, grace) && finalizers.is_none() {
            return Ok(stored);
        }
        return write_marked(api, r, name, &current, marked).await;
    }
    if crate::lifecycle::has_finalizers(&marked) {
        // Finalizers hold the object: mark it, and let their owners remove them.
        if crate::lifecycle::is_deleting(&stored) && finalizers.is_none() {
            return Ok(stored);
        }
        crate::lifecycle::mark_deleting(&mut marked);
        return write_marked(api, r, name, &current, marked).await;
    }
    let (_, mut ops) = crate::alloc::ops(&key, None, Some(&stored));
    ops.push(Op::Delete { key: key.clone() });
    let resp = api
        .store
        .txn(TxnRequest {
            compare: vec![Compare::ModRevision {
                key: key.clone(),
                op: flotilla_consensus::CmpOp::Equal,
                revision: current.mod_revision,
            }],
            success: ops,
            failure: vec![],
        })
        .await?;
    if !resp.succeeded {
        return Err(ApiError::conflict(r, name));
    }
    // The object's own delete; a Service's released allocations come first.
    let deleted = resp.results.iter().find_map(|res| match res {
        OpResult::Delete { deleted } => deleted.iter().find(|kv| kv.key == key).cloned(),
        _ => None,
    });
    served(r, deleted.as_ref().unwrap_or(&current))
}

/// `POST pods/NAME/eviction` (a policy/v1 `Eviction`): a graceful delete of the pod with the
/// eviction's `deleteOptions`, answered like the apiserver with a `Success` Status and 201,
/// unless the pod's PodDisruptionBudget forbids it (pkg/registry/core/pod/storage/eviction.go):
/// then 429 TooManyRequests, which `kubectl drain` retries until its timeout.
async fn evict(
    api: &Api,
    t: &Target,
    name: &str,
    headers: &HeaderMap,
    body: &Bytes,
    q: &ListQuery,
) -> ApiResult {
    let eviction = if body.is_empty() {
        json!({})
    } else {
        parse_body(headers, body)?
    };
    if let Some(kind) = eviction.get("kind").and_then(Value::as_str)
        && kind != "Eviction"
    {
        return Err(ApiError::bad_request(format!(
            "expected an Eviction, got a {kind}"
        )));
    }
    if let Some(named) = eviction.at("/metadata/name").and_then(Value::as_str)
        && !named.is_empty()
        && named != name
    {
        return Err(ApiError::bad_request(
            "name in URL does not match name in Eviction object",
        ));
    }
    let options = eviction.get("deleteOptions").filter(|o| o.is_object());
    let pod_target = Target {
        resource: t.resource,
        namespace: t.namespace.clone(),
        name: Some(name.to_owned()),
        sub: None,
    };
    let evicted = || {
        Ok(json_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    };
    // Like the apiserver's RetryOnConflict: the budget and the pod are read afresh each time.
    for _ in 0..8 {
        let current = read_current(api, &pod_target, name).await?;
        let pod = served(t.resource, &current)?;
        let deleting = crate::lifecycle::is_deleting(&pod);
        // Finished, unstarted and already deleted pods are not counted by any budget.
        if deleting
            || matches!(
                pod.at("/status/phase").and_then(Value::as_str),
                Some("Succeeded" | "Failed" | "Pending")
            )
        {
            delete_with(api, &pod_target, name, options, q).await?;
            return evicted();
        }
        let mut budgets = matching_budgets(api, t.namespace.as_deref(), &pod).await?;
        if budgets.len() > 1 {
            return Err(ApiError::internal_error(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ));
        }
        let Some((budget_kv, mut budget)) = budgets.pop() else {
            delete_with(api, &pod_target, name, options, q).await?;
            return evicted();
        };
        let ready = pod_is_ready(&pod);
        let status = |k: &str| {
            budget
                .at(&format!("/status/{k}"))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        if !ready {
            let policy = budget
                .at("/spec/unhealthyPodEvictionPolicy")
                .and_then(Value::as_str)
                .unwrap_or("IfHealthyBudget");
            // An unready pod does not count as healthy: evicting it costs the budget nothing
            // when the policy says so, or when the budget is met anyway. The delete is pinned
            // to the pod as read, so a pod that became ready meanwhile is looked at again.
            if policy == "AlwaysAllow"
                || (status("currentHealthy") >= status("desiredHealthy")
                    && status("desiredHealthy") > 0)
            {
                let mut pinned = options.cloned().unwrap_or_else(|| json!({}));
                pinned["preconditions"]["resourceVersion"] =
                    json!(current.mod_revision.to_string());
                match delete_with(api, &pod_target, name, Some(&pinned), q).await {
                    Err(e) if e.code() == 409 => continue,
                    other => {
                        other?;
                        return evicted();
                    }
                }
            }
        }
        check_and_decrement(&mut budget, name)?;
        if q.dry_run.is_some() {
            return evicted();
        }
        // One transaction: the budget's decrement (and the pod in `disruptedPods`) and the
        // pod's deletion, both compared with what was read, so two evictions can never both
        // spend the last disruption.
        let budgets_r = resources::find("policy", "v1", "poddisruptionbudgets")
            .ok_or_else(ApiError::path_not_found)?;
        let budget_name = budget
            .at("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if let Some(m) = budget["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let pod_key = t.resource.key(t.namespace.as_deref(), name);
        let requested_grace = options
            .and_then(|o| o.get("gracePeriodSeconds"))
            .and_then(Value::as_i64)
            .or(q.grace_period_seconds);
        let mut success = vec![Op::Put {
            key: budget_kv.key.clone(),
            value: encode_object(budgets_r, &budget_name, &budget)?,
        }];
        match crate::lifecycle::pod_grace_period(&pod, requested_grace) {
            Some(grace) => {
                let mut marked = pod.clone();
                crate::lifecycle::mark_pod_deleting(&mut marked, grace);
                if let Some(m) = marked["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                success.push(Op::Put {
                    key: pod_key.clone(),
                    value: encode_object(t.resource, name, &marked)?,
                });
            }
            None => success.push(Op::Delete {
                key: pod_key.clone(),
            }),
        }
        let resp = api
            .store
            .txn(TxnRequest {
                compare: vec![
                    Compare::ModRevision {
                        key: budget_kv.key.clone(),
                        op: flotilla_consensus::CmpOp::Equal,
                        revision: budget_kv.mod_revision,
                    },
                    Compare::ModRevision {
                        key: pod_key,
                        op: flotilla_consensus::CmpOp::Equal,
                        revision: current.mod_revision,
                    },
                ],
                success,
                failure: vec![],
            })
            .await?;
        if resp.succeeded {
            return evicted();
        }
    }
    Err(ApiError::conflict(t.resource, name))
}

fn pod_is_ready(pod: &Value) -> bool {
    pod.at("/status/conditions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| {
            c.get("type").and_then(Value::as_str) == Some("Ready")
                && c.get("status").and_then(Value::as_str) == Some("True")
        })
}

/// The PodDisruptionBudgets of the pod's namespace whose selector selects it.
async fn matching_budgets(
    api: &Api,
    namespace: Option<&str>,
    pod: &Value,
) -> Result<Vec<(KeyValue, Value)>, ApiError> {
    let r = resources::find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(ApiError::path_not_found)?;
    let labels = meta::labels_of(pod);
    let range = api
        .store
        .range(
            &r.namespace_prefix(namespace),
            usize::MAX,
            Read::Linearizable,
        )
        .await?;
    let mut out = Vec::new();
    for kv in range.kvs {
        let budget = served(r, &kv)?;
        let selector = budget.at("/spec/selector").unwrap_or(&Value::Null);
        if crate::validate::label_selector_selects(selector, &labels) {
            out.push((kv, budget));
        }
    }
    Ok(out)
}

/// The apiserver's `checkAndDecrement`: refuses while the budget's controller has not seen its
/// latest spec or when no disruption is allowed; otherwise spends one and records the pod.
fn check_and_decrement(budget: &mut Value, pod: &str) -> Result<(), ApiError> {
    const MAX_DISRUPTED_PODS: usize = 2000;
    let name = budget
        .at("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let at = |b: &Value, p: &str| b.at(p).and_then(Value::as_i64).unwrap_or(0);
    let cause = |message: String| StatusCause {
        reason: "DisruptionBudget".into(),
        message,
        field: String::new(),
    };
    const REFUSED: &str = "Cannot evict pod as it would violate the pod's disruption budget.";
    if at(budget, "/status/observedGeneration") < at(budget, "/metadata/generation") {
        return Err(ApiError::too_many_requests(
            REFUSED,
            10,
            vec![cause(format!(
                "The disruption budget {name} is still being processed by the server."
            ))],
        ));
    }
    let r = resources::find("policy", "v1", "poddisruptionbudgets")
        .ok_or_else(ApiError::path_not_found)?;
    let allowed = at(budget, "/status/disruptionsAllowed");
    if allowed < 0 {
        return Err(ApiError::forbidden(
            r,
            &name,
            "pdb disruptions allowed is negative",
        ));
    }
    let disrupted = budget
        .at("/status/disruptedPods")
        .and_then(Value::as_object)
        .map_or(0, |m| m.len());
    if disrupted > MAX_DISRUPTED_PODS {
        return Err(ApiError::forbidden(
            r,
            &name,
            "DisruptedPods map too big - too many evictions not confirmed by PDB controller",
        ));
    }
    if allowed == 0 {
        return Err(ApiError::too_many_requests(
            REFUSED,
            0,
            vec![cause(format!(
                "The disruption budget {name} needs {} healthy pods and has {} currently",
                at(budget, "/status/desiredHealthy"),
                at(budget, "/status/currentHealthy")
            ))],
        ));
    }
    let now = meta::rfc3339(meta::now_secs());
    budget["status"]["disruptionsAllowed"] = json!(allowed - 1);
    if allowed - 1 == 0 {
        set_disruption_allowed(budget, false, &now);
    }
    if !budget["status"]["disruptedPods"].is_object() {
        budget["status"]["disruptedPods"] = json!({});
    }
    budget["status"]["disruptedPods"][pod] = json!(now);
    Ok(())
}

/// `UpdateDisruptionAllowedCondition`, as the eviction handler applies it when it spends the
/// last disruption (the controller keeps it otherwise).
fn set_disruption_allowed(budget: &mut Value, allowed: bool, now: &str) {
    let (status, reason) = if allowed {
        ("True", "SufficientPods")
    } else {
        ("False", "InsufficientPods")
    };
    let generation = budget
        .at("/status/observedGeneration")
        .cloned()
        .unwrap_or(json!(0));
    let mut conditions: Vec<Value> = budget
        .at("/status/conditions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let fresh = json!({"type": "DisruptionAllowed", "status": status, "reason": reason,
        "message": "", "observedGeneration": generation, "lastTransitionTime": now});
    match conditions
        .iter_mut()
        .find(|c| c.get("type").and_then(Value::as_str) == Some("DisruptionAllowed"))
    {
        Some(c) if c.get("status").and_then(Value::as_str) == Some(status) => {
            c["reason"] = json!(reason);
        }
        Some(c) => *c = fresh,
        None => conditions.push(fresh),
    }
    budget["status"]["conditions"] = json!(conditions);
}

/// DELETE on a collection: every object that matches the selectors, each deleted as a DELETE
/// of it would be (finalizers, graceful pod deletion, the propagation policy), as the
/// apiserver does; an object deleted meanwhile by someone else is skipped.
async fn delete_collection(
    api: &Api,
    t: &Target,
    headers: &HeaderMap,
    body: &Bytes,
    q: &ListQuery,
) -> ApiResult {
    let r = t.resource;
    if r.plural == "namespaces" {
        return Err(ApiError::method_not_allowed(
            "deletecollection of namespaces",
        ));
    }
    let options = if body.is_empty() {
        None
    } else {
        Some(parse_body(headers, body)?)
    };
    let selector = label_selector(q)?;
    let range = api
        .store
        .range(
            &r.namespace_prefix(t.namespace.as_deref()),
            usize::MAX,
            Read::Linearizable,
        )
        .await?;
    let mut items = Vec::new();
    for kv in &range.kvs {
        let obj = served(r, kv)?;
        if !selector.matches(&meta::labels_of(&obj)) {
            continue;
        }
        if let Some(fs) = &q.field_selector
            && !field_matches(r, &obj, fs)?
        {
            continue;
        }
        let item = Target {
            resource: r,
            namespace: obj
                .at("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned),
            name: None,
            sub: None,
        };
        let name = obj
            .at("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        match delete_with(api, &item, name, options.as_ref(), q).await {
            Ok(deleted) => items.push(deleted),
            Err(e) if e.code() == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", r.kind),
            "apiVersion": r.api_version(),
            "metadata": {"resourceVersion": range.revision.to_string()},
            "items": items,
        }),
    ))
}

/// Creates the namespaces every cluster starts with, if they are missing. Idempotent, so every
/// node may run it.
/// The StorageClass every cluster starts with, marked default.
pub const DEFAULT_STORAGE_CLASS: &str = "local";
/// The provisioner of node-local volumes (the kubelets provision them).
pub const LOCAL_PROVISIONER: &str = "flotilla.io/local";
/// Marks the StorageClass claims without `storageClassName` get.
pub const DEFAULT_CLASS_ANNOTATION: &str = "storageclass.kubernetes.io/is-default-class";

pub async fn ensure_default_namespaces(store: &Store) -> Result<(), ApiError> {
    let ns = resources::find("", "v1", "namespaces")
        .ok_or_else(|| ApiError::internal("namespaces not served"))?;
    for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = ns.key(None, name);
        let obj = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": name,
                "uid": meta::new_uid(),
                "creationTimestamp": meta::rfc3339(meta::now_secs()),
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        });
        let bytes = encode_object(ns, name, &obj)?;
        store
            .txn(TxnRequest {
                compare: vec![Compare::Missing { key: key.clone() }],
                success: vec![Op::Put { key, value: bytes }],
                failure: vec![],
            })
            .await?;
    }
    // The default StorageClass: node-local directories, bound where the first pod using a
    // claim is scheduled (a local volume cannot follow a pod to another node).
    let sc = resources::find("storage.k8s.io", "v1", "storageclasses")
        .ok_or_else(|| ApiError::internal("storageclasses not served"))?;
    let key = sc.key(None, DEFAULT_STORAGE_CLASS);
    let obj = json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": DEFAULT_STORAGE_CLASS,
            "uid": meta::new_uid(),
            "creationTimestamp": meta::rfc3339(meta::now_secs()),
            "annotations": {DEFAULT_CLASS_ANNOTATION: "true"},
        },
        "provisioner": LOCAL_PROVISIONER,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    });
    store
        .txn(TxnRequest {
            compare: vec![Compare::Missing { key: key.clone() }],
            success: vec![Op::Put {
                key,
                value: encode_object(sc, DEFAULT_STORAGE_CLASS, &obj)?,
            }],
            failure: vec![],
        })
        .await?;
    // The `kubernetes` Service every cluster has, on the first service IP.
    let svc = resources::find("", "v1", "services")
        .ok_or_else(|| ApiError::internal("services not served"))?;
    let key = svc.key(Some("default"), "kubernetes");
    let ip = crate::alloc::KUBERNETES_SERVICE_IP.to_string();
    let obj = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "uid": meta::new_uid(),
            "creationTimestamp": meta::rfc3339(meta::now_secs()),
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
            "sessionAffinity": "None",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster",
        },
        "status": {"loadBalancer": {}},
    });
    let (mut compare, mut success) = crate::alloc::ops(&key, Some(&obj), None);
    compare.push(Compare::Missing { key: key.clone() });
    success.push(Op::Put {
        key,
        value: encode_object(svc, "kubernetes", &obj)?,
    });
    store
        .txn(TxnRequest {
            compare,
            success,
            failure: vec![],
        })
        .await?;
    Ok(())
}

/// Writes made inside the cluster by controllers and schedulers: the same admission as any API
/// write (defaults, validation, metadata, managedFields), plus the writer's own comparisons
/// (its shard lease: two owners of a shard never both win) and operations (allocation records)
/// in the same transaction.
pub mod internal {
    use super::*;

    /// What a controller adds to its writes' transactions.
    #[derive(Debug, Clone, Default)]
    pub struct Fence {
        pub compare: Vec<Compare>,
        pub also: Vec<Op>,
    }

    fn target(
        group: &str,
        version: &str,
        plural: &str,
        namespace: Option<&str>,
        name: Option<&str>,
        status: bool,
    ) -> Result<Target, ApiError> {
        let resource =
            resources::find(group, version, plural).ok_or_else(ApiError::path_not_found)?;
        Ok(Target {
            resource,
            namespace: namespace.map(str::to_owned),
            name: name.map(str::to_owned),
            sub: status.then_some(Sub::Status),
        })
    }

    fn opts(manager: &str, fence: Fence) -> WriteOpts {
        WriteOpts {
            validation: FieldValidation::Ignore,
            manager: Some(manager.to_owned()),
            force: false,
            dry_run: false,
            fence: fence.compare,
            also: fence.also,
        }
    }

    /// Creates `obj` (`generateName` works); the written object.
    pub async fn create(
        store: &Store,
        (group, version, plural): (&str, &str, &str),
        namespace: Option<&str>,
        obj: Value,
        manager: &str,
        fence: Fence,
    ) -> Result<Value, ApiError> {
        let api = Api {
            store: store.clone(),
            pods: None,
        };
        let t = target(group, version, plural, namespace, None, false)?;
        let opts = opts(manager, fence);
        let (written, _) = create_object(&api, &t, obj, &opts, manager, None).await?;
        Ok(written)
    }

    /// Binds several pending pods, as stored at the given mod revisions, to `node` in one
    /// transaction (the scheduler's batched bindings): each pod's `spec.nodeName` and
    /// `PodScheduled` condition, if no pod changed since and the fence holds. The revision
    /// written, or `None` when a comparison failed (nothing was written).
    pub async fn bind_all(
        store: &Store,
        node: &str,
        pods: &[(Value, u64)],
        fence: Fence,
    ) -> Result<Option<u64>, ApiError> {
        bind_groups(store, &[(node, pods)], fence).await
    }

    /// [`bind_all`] for several nodes' pods in one transaction: all bound, or none.
    pub async fn bind_groups(
        store: &Store,
        groups: &[(&str, &[(Value, u64)])],
        fence: Fence,
    ) -> Result<Option<u64>, ApiError> {
        let r = resources::find("", "v1", "pods").ok_or_else(ApiError::path_not_found)?;
        let events = resources::find("", "v1", "events").ok_or_else(ApiError::path_not_found)?;
        let now = meta::rfc3339(meta::now_secs());
        let mut compare = fence.compare;
        let mut success = fence.also;
        for (node, stored, revision) in groups
            .iter()
            .flat_map(|(node, pods)| pods.iter().map(move |(p, r)| (*node, p, r)))
        {
            let mut pod = stored.clone();
            let ns = pod
                .at("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let name = pod
                .at("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            pod["spec"]["nodeName"] = json!(node);
            let mut conditions: Vec<Value> = pod
                .at("/status/conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
            conditions.insert(
                0,
                json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
            );
            pod["status"]["conditions"] = json!(conditions);
            if let Some(m) = pod["metadata"].as_object_mut() {
                m.remove("resourceVersion");
            }
            let key = r.key(Some(&ns), &name);
            compare.push(Compare::ModRevision {
                key: key.clone(),
                op: flotilla_consensus::CmpOp::Equal,
                revision: *revision,
            });
            // kube-scheduler's `Scheduled` event, in the same transaction (no extra round).
            let uid = meta::new_uid();
            let event_name = format!("{name}.{}", &uid[..8]);
            let event = json!({
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": event_name, "namespace": ns, "uid": uid, "creationTimestamp": now},
                "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": ns,
                    "uid": pod.at("/metadata/uid").cloned().unwrap_or(Value::Null)},
                "reason": "Scheduled",
                "message": format!("Successfully assigned {ns}/{name} to {node}"),
                "type": "Normal",
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": "default-scheduler"},
                "reportingComponent": "default-scheduler",
            });
            success.push(Op::Put {
                key,
                value: encode_object(r, &name, &pod)?,
            });
            success.push(Op::Put {
                key: events.key(Some(&ns), &event_name),
                value: encode_object(events, &event_name, &event)?,
            });
        }
        let resp = store
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded.then_some(resp.revision))
    }

    /// Binds a pending pod to `node` (what `pods/binding` does): `spec.nodeName` and the
    /// `PodScheduled` condition, if the pod is unchanged since `resource_version` and the
    /// fence holds; `Ok(None)` otherwise.
    pub async fn bind(
        store: &Store,
        namespace: &str,
        name: &str,
        resource_version: u64,
        node: &str,
        fence: Fence,
    ) -> Result<Option<Value>, ApiError> {
        let t = target("", "v1", "pods", Some(namespace), Some(name), false)?;
        let key = t.resource.key(Some(namespace), name);
        let Some(current) = store.get(&key, Read::Linearizable).await?.kv else {
            return Ok(None);
        };
        if current.mod_revision != resource_version {
            return Ok(None);
        }
        let mut pod = served(t.resource, &current)?;
        if pod
            .at("/spec/nodeName")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty())
        {
            return Ok(None);
        }
        pod["spec"]["nodeName"] = json!(node);
        let now = meta::rfc3339(meta::now_secs());
        let scheduled = json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now});
        let mut conditions: Vec<Value> = pod
            .at("/status/conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        conditions.retain(|c| c.get("type").and_then(Value::as_str) != Some("PodScheduled"));
        conditions.insert(0, scheduled);
        pod["status"]["conditions"] = json!(conditions);
        if let Some(m) = pod["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        let bytes = encode_object(t.resource, name, &pod)?;
        let mut compare = vec![Compare::ModRevision {
            key: key.clone(),
            op: flotilla_consensus::CmpOp::Equal,
            revision: resource_version,
        }];
        compare.extend(fence.compare);
        let mut success = vec![Op::Put { key, value: bytes }];
        success.extend(fence.also);
        let resp = store
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await?;
        Ok(resp.succeeded.then(|| {
            pod["metadata"]["resourceVersion"] = json!(resp.revision.to_string());
            pod
        }))
    }

    /// Deletes an object as the API would (a pod on a node is marked for its kubelet with
    /// `grace` or its own grace period; an object with finalizers is marked), fenced. `uid`,
    /// when given, must still be the object's. `Ok(false)`: gone already, not the same
    /// object, or the fence or object changed.
    pub async fn delete(
        store: &Store,
        gvr: (&str, &str, &str),
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
        grace: Option<i64>,
        fence: Fence,
    ) -> Result<bool, ApiError> {
        delete_propagating(store, gvr, namespace, name, uid, grace, None, fence).await
    }

    /// [`delete`] with a propagation policy, as `DeleteOptions.propagationPolicy` gives it:
    /// `Foreground` and `Orphan` leave the object marked with the garbage collector's
    /// finalizer.
    #[allow(clippy::too_many_arguments)]
    pub async fn delete_propagating(
        store: &Store,
        (group, version, plural): (&str, &str, &str),
        namespace: Option<&str>,
        name: &str,
        uid: Option<&str>,
        grace: Option<i64>,
        policy: Option<crate::lifecycle::Propagation>,
        fence: Fence,
    ) -> Result<bool, ApiError> {
        let t = target(group, version, plural, namespace, Some(name), false)?;
        let r = t.resource;
        let key = r.key(namespace, name);
        let Some(current) = store.get(&key, Read::Linearizable).await?.kv else {
            return Ok(false);
        };
        let stored = served(r, &current)?;
        if uid.is_some_and(|u| stored.at("/metadata/uid").and_then(Value::as_str) != Some(u)) {
            return Ok(false);
        }
        let finalizers = crate::lifecycle::deletion_finalizers(&stored, policy);
        let mut marked = stored.clone();
        if let Some(f) = &finalizers {
            marked["metadata"]["finalizers"] = json!(f);
        }
        let mut success = if r.plural == "pods"
            && let Some(grace) = crate::lifecycle::pod_grace_period(&stored, grace)
        {
            if !crate::lifecycle::mark_pod_deleting(&mut marked, grace) && finalizers.is_none() {
                return Ok(true);
            }
            vec![Op::Put {
                key: key.clone(),
                value: encode_object(r, name, &marked)?,
            }]
        } else if crate::lifecycle::has_finalizers(&marked) {
            if crate::lifecycle::is_deleting(&stored) && finalizers.is_none() {
                return Ok(true);
            }
            crate::lifecycle::mark_deleting(&mut marked);
            vec![Op::Put {
                key: key.clone(),
                value: encode_object(r, name, &marked)?,
            }]
        } else {
            let (_, mut ops) = crate::alloc::ops(&key, None, Some(&stored));
            ops.push(Op::Delete { key: key.clone() });
            ops
        };
        success.extend(fence.also);
        let mut compare = vec![Compare::ModRevision {
            key,
            op: flotilla_consensus::CmpOp::Equal,
            revision: current.mod_revision,
        }];
        compare.extend(fence.compare);
        Ok(store
            .txn(TxnRequest {
                compare,
                success,
                failure: vec![],
            })
            .await?
            .succeeded)
    }

    /// Replaces the object, or only its status (`status`), if its `resourceVersion` is still
    /// current and the fence holds: `Ok(None)` when either changed.
    #[allow(clippy::too_many_arguments)]
    pub async fn replace(
        store: &Store,
        (group, version, plural): (&str, &str, &str),
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        status: bool,
        manager: &str,
        fence: Fence,
    ) -> Result<Option<Value>, ApiError> {
        let api = Api {
            store: store.clone(),
            pods: None,
        };
        let t = target(group, version, plural, namespace, Some(name), status)?;
        let current = read_current(&api, &t, name).await?;
        let old = served(t.resource, &current)?;
        if obj
            .at("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|rv| rv != current.mod_revision.to_string())
        {
            return Ok(None);
        }
        let new = scoped(t.resource, t.sub, &old, obj, name)?;
        let opts = opts(manager, fence);
        Ok(
            replace_object(&api, &t, name, new, &current, &opts, Some(manager))
                .await?
                .map(|(written, _)| written),
        )
    }
}
