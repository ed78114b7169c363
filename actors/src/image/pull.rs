//! Pulling from a registry: the OCI distribution API v2 over HTTPS (or plain HTTP for loopback
//! and listed registries), anonymous bearer tokens (`WWW-Authenticate: Bearer realm=…`),
//! manifest lists resolved to this machine's platform, blobs streamed to disk and verified.
//!
//! One connection per request: a pull makes a handful of requests, most of them large.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::archive::{Blob, MAX_JSON, Staged, manifest_digest};
use super::digest::{Sha256, digest_hex};
use super::oci::{self, IndexJson, Kind, ManifestJson, Platform};
use super::reference::Reference;
use super::{ImageStore, ImportedImage};
use crate::runtime::{Result, RuntimeError};

/// How to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    pub platform: Platform,
    /// Registries (`host` or `host:port`) spoken to over plain HTTP; loopback ones always are.
    pub plain_http: Vec<String>,
    /// Bound on connecting, on each response's headers, and on each pause of a body.
    pub timeout: Duration,
}

impl Default for PullOptions {
    fn default() -> PullOptions {
        PullOptions {
            platform: Platform::host(),
            plain_http: Vec::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct Client {
    image: String,
    scheme: &'static str,
    /// `host[:port]` of the registry API.
    authority: String,
    repo: String,
    token: Option<String>,
    tls: Option<TlsConnector>,
    timeout: Duration,
}

pub(crate) async fn pull(
    store: &ImageStore,
    reference: &str,
    options: &PullOptions,
) -> Result<ImportedImage> {
    let fail = |m: String| RuntimeError::ImagePull {
        image: reference.to_owned(),
        message: m,
    };
    let r = Reference::parse(reference).map_err(fail)?;
    let mut client = Client::new(reference, &r, options)?;
    let tmp = store.tmp_dir("pull")?;

    let wanted = r
        .digest
        .clone()
        .or(r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let (mut doc, mut media_type) = client.manifest(&wanted).await?;
    let top_digest = manifest_digest(&doc);
    if let Some(d) = &r.digest
        && *d != top_digest
    {
        return Err(fail(format!("registry sent manifest {top_digest} for {d}")));
    }
    let mut refs = vec![r.store_key(), format!("{}@{top_digest}", r.repository())];
    if let Kind::Index = oci::kind_of(&doc, media_type.as_deref()).map_err(fail)? {
        let index: IndexJson =
            serde_json::from_slice(&doc).map_err(|e| fail(format!("manifest list: {e}")))?;
        let Some(child) = oci::pick_platform(&index.manifests, &options.platform) else {
            return Err(fail(format!(
                "no image for {} in the manifest list",
                options.platform
            )));
        };
        let digest = child.digest.clone();
        (doc, media_type) = client.manifest(&digest).await?;
        if manifest_digest(&doc) != digest {
            return Err(fail(format!(
                "registry sent a manifest not matching {digest}"
            )));
        }
        refs.push(format!("{}@{digest}", r.repository()));
        if let Kind::Index = oci::kind_of(&doc, media_type.as_deref()).map_err(fail)? {
            return Err(fail("nested manifest lists are not supported".into()));
        }
    }
    let manifest: ManifestJson =
        serde_json::from_slice(&doc).map_err(|e| fail(format!("manifest: {e}")))?;
    let spool = tmp.0.join("spool");
    tokio::fs::create_dir_all(&spool).await?;
    let config = client.blob(&manifest.config, &spool.join("config")).await?;
    let mut layers = Vec::new();
    for (i, l) in manifest.layers.iter().enumerate() {
        layers.push(client.blob(l, &spool.join(format!("layer-{i}"))).await?);
    }
    let staged = Staged {
        manifest: doc,
        config,
        layers,
        references: Vec::new(),
    };
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        let result = store.install(&tmp.0, staged, &refs);
        drop(tmp);
        result
    })
    .await
    .map_err(|e| RuntimeError::Other(format!("pull task: {e}")))?
}

fn is_loopback(host: &str) -> bool {
    let h = host
        .trim_start_matches('[')
        .split(']')
        .next()
        .unwrap_or(host);
    let h = if host.starts_with('[') {
        h
    } else {
        host.split(':').next().unwrap_or(host)
    };
    h == "localhost"
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl Client {
    fn new(image: &str, r: &Reference, options: &PullOptions) -> Result<Client> {
        let authority = r.registry_host().to_owned();
        let plain = is_loopback(&authority) || options.plain_http.contains(&authority);
        let tls = if plain {
            None
        } else {
            Some(tls_connector(image)?)
        };
        Ok(Client {
            image: image.to_owned(),
            scheme: if plain { "http" } else { "https" },
            authority,
            repo: r.path.clone(),
            token: None,
            tls,
            timeout: options.timeout,
        })
    }

    fn fail(&self, message: String) -> RuntimeError {
        RuntimeError::ImagePull {
            image: self.image.clone(),
            message,
        }
    }

    /// GETs a manifest by tag or digest: its bytes and content type.
    async fn manifest(&mut self, tag_or_digest: &str) -> Result<(Vec<u8>, Option<String>)> {
        let path = format!("/v2/{}/manifests/{tag_or_digest}", self.repo);
        let resp = self.get(&path, ACCEPT_MANIFESTS).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Err(self.fail(format!("manifest {tag_or_digest} not found")));
        }
        if !status.is_success() {
            return Err(self.fail(format!("manifest {tag_or_digest}: HTTP {status}")));
        }
        let media_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned());
        let body = self.read_body(resp, MAX_JSON).await?;
        Ok((body, media_type))
    }

    /// Streams a blob to `dst`, checking its size and digest.
    async fn blob(&mut self, d: &oci::Descriptor, dst: &std::path::Path) -> Result<Blob> {
        if digest_hex(&d.digest).is_none() {
            return Err(self.fail(format!("unsupported digest {:?}", d.digest)));
        }
        let path = format!("/v2/{}/blobs/{}", self.repo, d.digest);
        let resp = self.get(&path, "*/*").await?;
        if !resp.status().is_success() {
            return Err(self.fail(format!("blob {}: HTTP {}", d.digest, resp.status())));
        }
        let mut file = tokio::fs::File::create(dst).await?;
        let mut hash = Sha256::new();
        let mut body = resp.into_body();
        loop {
            let frame = tokio::time::timeout(self.timeout, body.frame())
                .await
                .map_err(|_| self.fail(format!("blob {}: stalled", d.digest)))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| self.fail(format!("blob {}: {e}", d.digest)))?;
            if let Ok(data) = frame.into_data() {
                hash.update(&data);
                if hash.len() > d.size {
                    return Err(self.fail(format!("blob {} is larger than {}", d.digest, d.size)));
                }
                file.write_all(&data).await?;
            }
        }
        file.flush().await?;
        let size = hash.len();
        let digest = hash.finish();
        if digest != d.digest || size != d.size {
            return Err(self.fail(format!(
                "blob {} arrived corrupt ({size} bytes, digest {digest})",
                d.digest
            )));
        }
        Ok(Blob {
            path: dst.to_path_buf(),
            digest,
            size,
        })
    }

    /// GETs `path` from the registry: follows redirects (credentials stay with the registry)
    /// and answers one bearer challenge with an anonymous token.
    async fn get(&mut self, path: &str, accept: &str) -> Result<Response<Incoming>> {
        let mut url: Uri = format!("{}://{}{path}", self.scheme, self.authority)
            .parse()
            .map_err(|e| self.fail(format!("bad URL: {e}")))?;
        let mut authenticated = false;
        for _ in 0..8 {
            let to_registry = url.authority().map(|a| a.as_str()) == Some(&self.authority);
            let auth = self
                .token
                .as_ref()
                .filter(|_| to_registry)
                .map(|t| format!("Bearer {t}"));
            let resp = self.send(&url, accept, auth.as_deref()).await?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && to_registry && !authenticated {
                let challenge = resp
                    .headers()
                    .get(header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                self.token = Some(self.fetch_token(&challenge).await?);
                authenticated = true;
                continue;
            }
            if status.is_redirection() {
                let location = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.fail(format!("{status} without a Location")))?;
                url = join_url(&url, location)
                    .ok_or_else(|| self.fail(format!("bad redirect {location:?}")))?;
                continue;
            }
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                return Err(self.fail(format!(
                    "{status}: the registry wants credentials (only anonymous pulls are supported)"
                )));
            }
            return Ok(resp);
        }
        Err(self.fail("too many redirects".into()))
    }

    async fn fetch_token(&mut self, challenge: &str) -> Result<String> {
        let Some(params) = challenge.strip_prefix("Bearer ") else {
            return Err(self.fail(format!(
                "registry asks for {challenge:?} authentication; only anonymous bearer tokens are supported"
            )));
        };
        let params = parse_challenge(params);
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let realm =
            get("realm").ok_or_else(|| self.fail("bearer challenge without realm".into()))?;
        let scope = get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.repo));
        let mut query = format!("scope={}", percent_encode(&scope));
        if let Some(service) = get("service") {
            query = format!("service={}&{query}", percent_encode(&service));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url: Uri = format!("{realm}{sep}{query}")
            .parse()
            .map_err(|e| self.fail(format!("bad token realm {realm:?}: {e}")))?;
        let resp = self.send(&url, "application/json", None).await?;
        if !resp.status().is_success() {
            return Err(self.fail(format!("token service {realm}: HTTP {}", resp.status())));
        }
        let body = self.read_body(resp, 1 << 20).await?;
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| self.fail(format!("token service answer: {e}")))?;
        t.token
            .or(t.access_token)
            .ok_or_else(|| self.fail("token service sent no token".into()))
    }

    async fn read_body(&self, resp: Response<Incoming>, limit: u64) -> Result<Vec<u8>> {
        let mut body = resp.into_body();
        let mut out = Vec::new();
        loop {
            let frame = tokio::time::timeout(self.timeout, body.frame())
                .await
                .map_err(|_| self.fail("response stalled".into()))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| self.fail(format!("reading response: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if (out.len() + data.len()) as u64 > limit {
                    return Err(self.fail("response too large".into()));
                }
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    /// One GET on a new connection.
    async fn send(
        &self,
        url: &Uri,
        accept: &str,
        auth: Option<&str>,
    ) -> Result<Response<Incoming>> {
        let https = match url.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(self.fail(format!("unsupported URL {url}"))),
        };
        let host = url
            .host()
            .ok_or_else(|| self.fail(format!("no host in {url}")))?;
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let unreachable =
            |e: String| self.fail(format!("no registry reachable: {host}:{port}: {e}"));
        let tcp = tokio::time::timeout(self.timeout, TcpStream::connect((bare_host, port)))
            .await
            .map_err(|_| unreachable("connect timed out".into()))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = if https {
            let tls = match &self.tls {
                Some(t) => t.clone(),
                None => tls_connector(&self.image)?,
            };
            let name = ServerName::try_from(bare_host.to_owned())
                .map_err(|e| self.fail(format!("bad TLS name {bare_host:?}: {e}")))?;
            let stream = tokio::time::timeout(self.timeout, tls.connect(name, tcp))
                .await
                .map_err(|_| unreachable("TLS handshake timed out".into()))?
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let authority = url.authority().map(|a| a.as_str()).unwrap_or(host);
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, authority)
            .header(header::ACCEPT, accept)
            .header(
                header::USER_AGENT,
                concat!("flotilla/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| self.fail(format!("request: {e}")))?;
        tokio::time::timeout(self.timeout, sender.send_request(req))
            .await
            .map_err(|_| self.fail(format!("{url}: no answer in {:?}", self.timeout)))?
            .map_err(|e| self.fail(format!("{url}: {e}")))
    }
}

fn tls_connector(image: &str) -> Result<TlsConnector> {
    let fail = |m: String| RuntimeError::ImagePull {
        image: image.to_owned(),
        message: m,
    };
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if roots.is_empty() {
        return Err(fail(
            "no trusted root certificates found on this machine".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `realm="…",service="…",scope="…"` → pairs (values may be quoted, with commas inside).
fn parse_challenge(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            value = r[..end].to_owned();
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.push((key, value));
    }
    out
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Resolves a `Location` header against the URL that answered.
fn join_url(base: &Uri, location: &str) -> Option<Uri> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.parse().ok();
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}").parse().ok();
    }
    let path = base.path();
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    format!("{scheme}://{authority}{dir}{location}")
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_and_urls() {
        let p = parse_challenge(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.docker.io/token".into())
        );
        assert_eq!(p[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(
            p[2],
            ("scope".into(), "repository:library/busybox:pull".into())
        );
        assert_eq!(
            percent_encode("repository:a/b:pull,push"),
            "repository:a/b:pull%2Cpush"
        );
        let base: Uri = "http://127.0.0.1:5000/v2/x/blobs/sha256:ab"
            .parse()
            .unwrap();
        assert_eq!(
            join_url(&base, "/cdn/1").unwrap().to_string(),
            "http://127.0.0.1:5000/cdn/1"
        );
        assert_eq!(
            join_url(&base, "c").unwrap().to_string(),
            "http://127.0.0.1:5000/v2/x/blobs/c"
        );
        assert_eq!(
            join_url(&base, "https://cdn.example/x")
                .unwrap()
                .to_string(),
            "https://cdn.example/x"
        );
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry-1.docker.io"));
    }
}
