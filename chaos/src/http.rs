//! A small HTTP/1.1 JSON client for talking to nodes' admin and status endpoints.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for HttpClient {
    fn default() -> Self {
        HttpClient {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

/// A response: status code and body.
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

impl Response {
    pub fn json<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "decoding response ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl HttpClient {
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<Response> {
        self.request_as(method, url, "application/json", body, timeout)
            .await
    }

    /// A request whose body is of `content_type`.
    pub async fn request_as(
        &self,
        method: &str,
        url: &str,
        content_type: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> anyhow::Result<Response> {
        let req = hyper::Request::builder()
            .method(method)
            .uri(url)
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building request")?;
        let fut = async {
            let resp = self.client.request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            anyhow::Ok(Response { status, body })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r.with_context(|| format!("{method} {url}")),
            Err(_) => bail!("{method} {url}: timed out after {timeout:?}"),
        }
    }

    pub async fn get_json<T: DeserializeOwned>(
        &self,
        url: &str,
        timeout: Duration,
    ) -> anyhow::Result<T> {
        let resp = self.request("GET", url, None, timeout).await?;
        if resp.status != 200 {
            bail!(
                "GET {url}: {} {}",
                resp.status,
                String::from_utf8_lossy(&resp.body)
            );
        }
        resp.json()
    }

    pub async fn send_json(
        &self,
        method: &str,
        url: &str,
        body: &impl Serialize,
        timeout: Duration,
    ) -> anyhow::Result<Response> {
        let body = serde_json::to_vec(body)?;
        self.request(method, url, Some(body), timeout).await
    }
}
