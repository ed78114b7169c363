//! A minimal etcd v3 client: the `KV/Put` unary gRPC call over HTTP/2, encoded by hand.
//!
//! The benchmark needs exactly one etcd call; a full gRPC stack would need `protoc` at build
//! time. This sends what `etcdctl put` sends (real gRPC over one multiplexed HTTP/2
//! connection per endpoint), so etcd is measured on its native protocol.

use std::time::Duration;

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

#[derive(Clone)]
pub struct EtcdKv {
    client: Client<HttpConnector, Full<Bytes>>,
    endpoint: String,
}

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

/// `PutRequest { key = 1; value = 2; }` in protobuf, inside a gRPC length-prefixed frame.
fn put_frame(key: &[u8], value: &[u8]) -> Bytes {
    let mut msg = BytesMut::with_capacity(key.len() + value.len() + 16);
    msg.put_u8(0x0a);
    put_varint(&mut msg, key.len() as u64);
    msg.put_slice(key);
    msg.put_u8(0x12);
    put_varint(&mut msg, value.len() as u64);
    msg.put_slice(value);
    let mut frame = BytesMut::with_capacity(msg.len() + 5);
    frame.put_u8(0); // not compressed
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    frame.freeze()
}

impl EtcdKv {
    pub fn new(endpoint: &str) -> EtcdKv {
        // Like gRPC clients, disable Nagle: otherwise small requests wait for delayed ACKs.
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        EtcdKv {
            client,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
        }
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> anyhow::Result<()> {
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("{}/etcdserverpb.KV/Put", self.endpoint))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(put_frame(key, value)))
            .context("building the etcd request")?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .context("etcd put timed out")??;
        if resp.status() != 200 {
            bail!("etcd put: HTTP {}", resp.status());
        }
        let collected = resp.into_body().collect().await?;
        // gRPC reports failure in the trailers (or, for immediate errors, the headers).
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("0")
            .to_owned();
        if status != "0" {
            bail!("etcd put: grpc-status {status}");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn put_request_encoding_matches_protobuf() {
        let frame = super::put_frame(b"k", b"vv");
        assert_eq!(
            &frame[..],
            &[0, 0, 0, 0, 7, 0x0a, 1, b'k', 0x12, 2, b'v', b'v']
        );
    }
}
