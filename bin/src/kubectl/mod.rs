//! kubectl-like client commands (`apply`, `get`, `describe`, `delete`, `create`, `expose`,
//! `scale`, `rollout`, `logs`, `exec`, `cluster-info`) on kube-rs, talking to the cluster of a
//! kubeconfig like kubectl does: resource types resolved through discovery, tables from the
//! server's `Table` responses, errors worded like kubectl's.

mod apply;
mod create;
mod describe;
mod discovery;
mod get;
mod manifest;
mod output;
mod rollout;

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::Value;

pub use discovery::ResourceInfo;

/// Flags every kubectl-like command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct Globals {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then .flotilla/kubeconfig).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The namespace scope for this request (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    namespace: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KubeCommand {
    /// Apply a configuration to resources by file name or stdin (server-side apply).
    Apply(apply::ApplyArgs),
    /// Display one or many resources.
    Get(get::GetArgs),
    /// Show details of a specific resource or group of resources.
    Describe(describe::DescribeArgs),
    /// Delete resources by file names, stdin, resources and names, or by label selector.
    Delete(apply::DeleteArgs),
    /// Create a resource.
    Create(create::CreateArgs),
    /// Expose a deployment, replica set, pod or service as a new Service.
    Expose(create::ExposeArgs),
    /// Set a new size for a deployment, replica set, replication controller or stateful set.
    Scale(create::ScaleArgs),
    /// Manage the rollout of a deployment.
    Rollout(rollout::RolloutArgs),
    /// Print the logs of a container in a pod.
    Logs(rollout::LogsArgs),
    /// Execute a command in a container.
    Exec(rollout::ExecArgs),
    /// Display addresses of the control plane and services with the cluster-service label.
    ClusterInfo(rollout::ClusterInfoArgs),
}

/// An error that was already printed (commands that go on after a failed object).
#[derive(Debug)]
pub struct Reported;

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("errors were reported above")
    }
}

impl std::error::Error for Reported {}

/// Runs a command; errors are printed the way kubectl prints them and exit with status 1.
pub async fn run(command: KubeCommand) -> anyhow::Result<()> {
    // kube-rs builds its rustls config on the process-wide provider; ring is the only one
    // compiled in, installing it explicitly keeps that from depending on feature unification.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match command {
        KubeCommand::Apply(a) => apply::apply(a).await,
        KubeCommand::Get(a) => get::get(a).await,
        KubeCommand::Describe(a) => describe::describe(a).await,
        KubeCommand::Delete(a) => apply::delete(a).await,
        KubeCommand::Create(a) => create::create(a).await,
        KubeCommand::Expose(a) => create::expose(a).await,
        KubeCommand::Scale(a) => create::scale(a).await,
        KubeCommand::Rollout(a) => rollout::rollout(a).await,
        KubeCommand::Logs(a) => rollout::logs(a).await,
        KubeCommand::Exec(a) => rollout::exec(a).await,
        KubeCommand::ClusterInfo(a) => rollout::cluster_info(a).await,
    };
    match result {
        Ok(()) => Ok(()),
        Err(e) => {
            if !e.is::<Reported>() {
                report(&e);
            }
            let _ = std::io::stdout().flush();
            // kubectl's own wording is already on stderr; main's `error: ...` would repeat it.
            std::process::exit(1);
        }
    }
}

const USER_AGENT: &str = concat!("flotilla/v", env!("CARGO_PKG_VERSION"));

/// The server URL of the context in use, for connection error messages.
static SERVER: OnceLock<String> = OnceLock::new();

/// A connected client and the namespace commands default to.
pub struct Kube {
    pub client: Client,
    /// `-n`, else the context's namespace, else `default`.
    pub namespace: String,
    /// Whether `-n` was given (apply refuses objects of another namespace then).
    pub namespace_flag: bool,
    /// The context's server URL, as written in the kubeconfig.
    pub server: String,
    resources: tokio::sync::OnceCell<Vec<ResourceInfo>>,
}

impl Kube {
    pub async fn connect(g: &Globals) -> anyhow::Result<Kube> {
        let path = kubeconfig_path(g.kubeconfig.as_ref());
        if !path.exists() {
            anyhow::bail!(
                "no cluster found: {} does not exist (start one with `flotilla up`, or pass --kubeconfig)",
                path.display()
            );
        }
        let kubeconfig = Kubeconfig::read_from(&path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        if let Some(ctx) = &g.context
            && !kubeconfig.contexts.iter().any(|c| &c.name == ctx)
        {
            anyhow::bail!("context was not found for specified context: {ctx}");
        }
        let options = KubeConfigOptions {
            context: g.context.clone(),
            ..Default::default()
        };
        let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .with_context(|| format!("loading kubeconfig {}", path.display()))?;
        // kube-rs sends no User-Agent; the server names the field manager of writes without
        // an explicit one after the client program, as the apiserver does.
        let agent = format!(
            "{USER_AGENT} ({}/{})",
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_str(&agent)
                .unwrap_or(http::HeaderValue::from_static(USER_AGENT)),
        ));
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_owned();
        let _ = SERVER.set(server.clone());
        let namespace = match &g.namespace {
            Some(ns) if !ns.is_empty() => ns.clone(),
            _ => config.default_namespace.clone(),
        };
        check_path_segment("namespace", &namespace)?;
        let client = Client::try_from(config).context("building the API client")?;
        Ok(Kube {
            client,
            namespace,
            namespace_flag: g.namespace.as_deref().is_some_and(|n| !n.is_empty()),
            server,
            resources: tokio::sync::OnceCell::new(),
        })
    }

    /// Every resource the server serves (discovery, fetched once per command).
    pub async fn resources(&self) -> anyhow::Result<&[ResourceInfo]> {
        let v = self
            .resources
            .get_or_try_init(|| discovery::discover(&self.client))
            .await?;
        Ok(v)
    }

    /// Resolves a resource type as typed on the command line (plural, singular, short name,
    /// kind, `plural.group`, `plural.version.group`).
    pub async fn resolve(&self, ty: &str) -> anyhow::Result<ResourceInfo> {
        discovery::resolve(self.resources().await?, ty)
    }

    /// Resolves `TYPE[,TYPE...]`, expanding `all`.
    pub async fn resolve_list(&self, types: &str) -> anyhow::Result<Vec<ResourceInfo>> {
        discovery::resolve_list(self.resources().await?, types)
    }

    /// The resource serving `apiVersion` + `kind` (for manifests).
    pub async fn for_kind(&self, api_version: &str, kind: &str) -> anyhow::Result<ResourceInfo> {
        discovery::for_kind(self.resources().await?, api_version, kind)
    }

    /// The namespace an object of `r` lives in: none for cluster-scoped resources.
    pub fn ns_for(&self, r: &ResourceInfo) -> Option<&str> {
        r.namespaced.then_some(self.namespace.as_str())
    }

    /// GET of a JSON document at `path` (an object or a list).
    pub async fn get_json(&self, path: &str) -> Result<Value, kube::Error> {
        let req = http::Request::get(path)
            .body(Vec::new())
            .map_err(kube::Error::HttpError)?;
        self.client.request::<Value>(req).await
    }

    /// GET of one object; `None` when it does not exist.
    pub async fn get_opt(
        &self,
        r: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> anyhow::Result<Option<Value>> {
        match self.get_json(&r.object_path(ns, name)).await {
            Ok(v) => Ok(Some(v)),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

/// `--kubeconfig`, then the first existing file of `$KUBECONFIG`, then `.flotilla/kubeconfig`.
fn kubeconfig_path(flag: Option<&PathBuf>) -> PathBuf {
    if let Some(p) = flag {
        return p.clone();
    }
    match std::env::var_os("KUBECONFIG") {
        Some(v) if !v.is_empty() => std::env::split_paths(&v)
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from(".flotilla/kubeconfig")),
        _ => PathBuf::from(".flotilla/kubeconfig"),
    }
}

/// Prints an error the way kubectl does.
pub fn report(e: &anyhow::Error) {
    eprintln!("{}", error_message(e));
}

/// kubectl's wording: `Error from server (Reason): message` for API errors, a connection
/// message when the server is unreachable, `error: ...` otherwise.
pub fn error_message(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(k) = cause.downcast_ref::<kube::Error>() {
            return kube_error_message(k);
        }
    }
    format!("error: {e:#}")
}

fn kube_error_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => server_error(status),
        kube::Error::HyperError(_) | kube::Error::Service(_) => {
            let root = root_cause(e);
            let server = SERVER.get().map(String::as_str).unwrap_or("<unknown>");
            let host = server
                .split_once("://")
                .map_or(server, |(_, rest)| rest)
                .trim_end_matches('/');
            if root.to_lowercase().contains("connection refused") {
                format!(
                    "The connection to the server {host} was refused - did you specify the right host or port?"
                )
            } else {
                format!("Unable to connect to the server: {root}")
            }
        }
        other => format!("error: {other}"),
    }
}

/// The innermost error message, where the useful detail of a transport error is.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    let mut text = e.to_string();
    for _ in 0..16 {
        match cur.source() {
            Some(s) => {
                text = s.to_string();
                cur = s;
            }
            None => break,
        }
    }
    text
}

/// `Error from server (NotFound): deployments.apps "x" not found`.
pub fn server_error(s: &kube::core::Status) -> String {
    // A body that was no Status: kube-rs fills in this reason; client-go derives one from
    // the HTTP code instead.
    let parsed = s.reason != "Failed to parse error data";
    let reason = if parsed && !s.reason.is_empty() {
        s.reason.clone()
    } else {
        reason_for_code(s.code).to_owned()
    };
    let message = if parsed && !s.message.is_empty() {
        s.message.clone()
    } else {
        message_for_code(s.code, &s.message)
    };
    if reason.is_empty() {
        format!("Error from server: {message}")
    } else {
        format!("Error from server ({reason}): {message}")
    }
}

fn reason_for_code(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Gone",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

fn message_for_code(code: u16, body: &str) -> String {
    let generic = match code {
        404 => "the server could not find the requested resource",
        400 => "the server rejected our request for an unknown reason",
        403 => "the server does not allow access to the requested resource",
        405 => "the server does not allow this method on the requested resource",
        500 => "an error on the server has prevented the request from succeeding",
        503 => "the server is currently unable to handle the request",
        _ => "",
    };
    let body = body.trim();
    match (generic.is_empty(), body.is_empty()) {
        (false, true) => generic.to_owned(),
        (false, false) => format!("{generic} ({body})"),
        (true, false) => body.to_owned(),
        (true, true) => format!("unknown error (HTTP {code})"),
    }
}

/// Whether an error is the server's NotFound.
pub fn is_not_found(e: &anyhow::Error) -> bool {
    e.chain().any(
        |c| matches!(c.downcast_ref::<kube::Error>(), Some(kube::Error::Api(s)) if s.code == 404),
    )
}

/// Go-style durations as kubectl takes them: `30s`, `5m`, `1h30m`, `500ms`, `0`.
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bad = || anyhow::anyhow!("invalid duration {s:?} (use e.g. 30s, 5m, 1h)");
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += n * unit;
        rest = &rest[unit_len..];
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// The apiserver's rule for names that go into URL paths (namespaces, object names).
pub fn check_path_segment(what: &str, s: &str) -> anyhow::Result<()> {
    if s == "." || s == ".." {
        anyhow::bail!("invalid {what} {s:?}: may not be '.' or '..'");
    }
    if let Some(c) = s.chars().find(|c| matches!(c, '/' | '%')) {
        anyhow::bail!("invalid {what} {s:?}: may not contain '{c}'");
    }
    Ok(())
}

/// Splits `TYPE/NAME`.
pub fn split_type_name(s: &str) -> Option<(&str, &str)> {
    s.split_once('/')
        .filter(|(t, n)| !t.is_empty() && !n.is_empty())
}

/// `TYPE NAME` or `TYPE/NAME` from a command's positional arguments.
pub fn one_object(args: &[String], what: &str) -> anyhow::Result<(String, String)> {
    match args {
        [one] => match split_type_name(one) {
            Some((t, n)) => Ok((t.to_owned(), n.to_owned())),
            None => anyhow::bail!("{what}: expected TYPE/NAME or TYPE NAME, got {one:?}"),
        },
        [t, n] if !t.contains('/') => Ok((t.clone(), n.clone())),
        _ => anyhow::bail!("{what}: expected TYPE/NAME or TYPE NAME"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn server_errors_read_like_kubectl() {
        let s = kube::core::Status::failure("deployments.apps \"x\" not found", "NotFound")
            .with_code(404);
        assert_eq!(
            server_error(&s),
            "Error from server (NotFound): deployments.apps \"x\" not found"
        );
        let raw = kube::core::Status::failure("404 page not found", "Failed to parse error data")
            .with_code(404);
        assert_eq!(
            server_error(&raw),
            "Error from server (NotFound): the server could not find the requested resource (404 page not found)"
        );
    }
}
