//! sha256 digests (ring, the workspace's one crypto provider) in the OCI `sha256:<hex>` form.

use std::io::{self, Read};

use ring::digest::{Context, SHA256};

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// A running sha256 over a stream, with its length.
pub(crate) struct Sha256 {
    ctx: Context,
    len: u64,
}

impl Sha256 {
    pub(crate) fn new() -> Sha256 {
        Sha256 {
            ctx: Context::new(&SHA256),
            len: 0,
        }
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
        self.len += data.len() as u64;
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// `sha256:<hex>`.
    pub(crate) fn finish(self) -> String {
        format!("sha256:{}", hex(self.ctx.finish().as_ref()))
    }
}

pub(crate) fn sha256_bytes(data: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.finish()
}

/// Hashes everything read through it.
pub(crate) struct HashReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> HashReader<R> {
    pub(crate) fn new(inner: R) -> HashReader<R> {
        HashReader {
            inner,
            hash: Sha256::new(),
        }
    }

    /// Reads what is left (the tar end-of-archive padding counts in a diff id) and returns the
    /// digest of the whole stream.
    pub(crate) fn drain_and_finish(mut self) -> io::Result<String> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.hash.finish())
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The hex part of a well-formed `sha256:<64 lowercase hex>` digest.
pub(crate) fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    is_hex64(hex).then_some(hex)
}

pub(crate) fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digest() {
        assert_eq!(
            sha256_bytes(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(
            digest_hex("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
                .is_some()
        );
        assert!(digest_hex("sha256:BA7816").is_none());
        assert!(
            digest_hex("sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
                .is_none()
        );
    }
}
