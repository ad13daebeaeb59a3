//! Reading the server name out of a TLS ClientHello without terminating
//! TLS: the bytes are kept so an L4 route can replay them to the backend and
//! an L7 route can hand them to rustls.
//!
//! The parser is a pure function over a byte prefix: it answers "need more
//! bytes", "this is the hello", or "this is not a ClientHello". It never
//! panics and never reads past its input (every length is checked).

use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a ClientHello may take on the wire (a hello is a few hundred
/// bytes to a few KiB; post-quantum key shares and PSKs stay far below).
pub(crate) const MAX_HELLO_BYTES: usize = 64 * 1024;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const EXT_SERVER_NAME: u16 = 0;
const MAX_RECORD: usize = 16 * 1024;
/// Real clients send their hello in one record, rarely two; a hello dripped
/// in tiny records would make re-parsing each read quadratic.
const MAX_RECORDS: usize = 64;

/// What a byte prefix says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parse {
    /// A valid prefix of a ClientHello; read more.
    Incomplete,
    /// The whole ClientHello: its server name (lower case, no trailing dot)
    /// if it sent one.
    Hello { sni: Option<String> },
    /// Not a TLS ClientHello.
    Invalid(&'static str),
}

/// Parses the start of a connection. Handshake messages may span records.
pub(crate) fn parse(buf: &[u8]) -> Parse {
    let mut handshake: Vec<u8> = Vec::new();
    let mut pos = 0;
    for _ in 0..MAX_RECORDS {
        let rest = &buf[pos..];
        // Reject garbage from its first byte rather than waiting for more.
        if let Some(&t) = rest.first()
            && t != RECORD_HANDSHAKE
        {
            return Parse::Invalid("not a TLS handshake record");
        }
        if let Some(&major) = rest.get(1)
            && major != 3
        {
            return Parse::Invalid("not a TLS record version");
        }
        if rest.len() < 5 {
            return Parse::Incomplete;
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > MAX_RECORD {
            return Parse::Invalid("bad TLS record length");
        }
        // The handshake header in the first record tells early whether this
        // is a ClientHello and whether it fits.
        let avail = &rest[5..rest.len().min(5 + len)];
        let mut head = handshake.clone();
        head.extend_from_slice(&avail[..avail.len().min(4)]);
        if let Some(&t) = head.first()
            && t != HANDSHAKE_CLIENT_HELLO
        {
            return Parse::Invalid("not a ClientHello");
        }
        if head.len() >= 4 {
            let msg_len = u24(&head[1..4]);
            if msg_len > MAX_HELLO_BYTES {
                return Parse::Invalid("ClientHello too large");
            }
        }
        if rest.len() < 5 + len {
            return Parse::Incomplete;
        }
        handshake.extend_from_slice(&rest[5..5 + len]);
        pos += 5 + len;
        if handshake.len() >= 4 {
            let msg_len = u24(&handshake[1..4]);
            if handshake.len() >= 4 + msg_len {
                return match client_hello(&handshake[4..4 + msg_len]) {
                    Some(sni) => Parse::Hello { sni },
                    None => Parse::Invalid("malformed ClientHello"),
                };
            }
        }
    }
    Parse::Invalid("ClientHello split into too many records")
}

fn u24(b: &[u8]) -> usize {
    (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2])
}

/// A bounds-checked reader over a byte slice.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u8()?);
        self.take(n)
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        self.take(n)
    }
}

/// The SNI of a ClientHello body (`Some(None)`: valid, no SNI).
fn client_hello(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    let version = r.u16()?;
    if version >> 8 != 3 {
        return None;
    }
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.is_empty() || suites.len() % 2 != 0 {
        return None;
    }
    if r.vec8()?.is_empty() {
        return None; // compression methods
    }
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut exts = Reader(r.vec16()?);
    if !r.0.is_empty() {
        return None;
    }
    let mut sni = None;
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let data = exts.vec16()?;
        if kind == EXT_SERVER_NAME {
            if sni.is_some() {
                return None; // duplicate extension
            }
            sni = Some(server_name(data)?);
        }
    }
    Some(sni.flatten())
}

/// The host_name entry of a server_name extension, lower-cased. A name that
/// is not a plausible DNS name makes the hello invalid.
fn server_name(data: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(data);
    let mut list = Reader(r.vec16()?);
    if !r.0.is_empty() {
        return None;
    }
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind != 0 {
            continue;
        }
        let name = name.strip_suffix(b".").unwrap_or(name);
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.' || *b == b'_');
        if !ok {
            return None;
        }
        let s = String::from_utf8(name.to_ascii_lowercase()).ok()?;
        return Some(Some(s));
    }
    Some(None)
}

/// Why no ClientHello could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelloError {
    #[error("connection closed before the ClientHello was complete")]
    Eof,
    #[error("{0}")]
    Invalid(&'static str),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads from `r` until a whole ClientHello has arrived. Returns every
/// byte read (to replay) and the server name. Callers bound it in time.
pub(crate) async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<(Vec<u8>, Option<String>), HelloError> {
    let mut buf = Vec::with_capacity(2048);
    loop {
        if buf.len() >= MAX_HELLO_BYTES + 5 * (MAX_HELLO_BYTES / MAX_RECORD + 1) {
            return Err(HelloError::Invalid("ClientHello too large"));
        }
        if r.read_buf(&mut buf).await? == 0 {
            return Err(HelloError::Eof);
        }
        match parse(&buf) {
            Parse::Incomplete => {}
            Parse::Hello { sni } => return Ok((buf, sni)),
            Parse::Invalid(why) => return Err(HelloError::Invalid(why)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;

    /// A real ClientHello from rustls for `sni` (a name, or an IP: no SNI).
    pub(crate) fn rustls_hello(sni: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(sni.to_string()).expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).expect("client");
        let mut out = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut out).expect("write");
        }
        out
    }

    /// Re-frames a single-record hello into records of at most `n` bytes.
    fn fragment(hello: &[u8], n: usize) -> Vec<u8> {
        let body = &hello[5..];
        let mut out = Vec::new();
        for chunk in body.chunks(n) {
            out.extend_from_slice(&[0x16, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[test]
    fn reads_sni_from_real_hellos() {
        let hello = rustls_hello("Web.Example.NET");
        assert_eq!(
            parse(&hello),
            Parse::Hello {
                sni: Some("web.example.net".into())
            }
        );
        assert_eq!(parse(&rustls_hello("127.0.0.1")), Parse::Hello { sni: None });
        for n in [16, 100, 512] {
            assert_eq!(
                parse(&fragment(&hello, n)),
                Parse::Hello {
                    sni: Some("web.example.net".into())
                },
                "records of {n} bytes"
            );
        }
    }

    #[test]
    fn every_strict_prefix_is_incomplete() {
        let hello = rustls_hello("web.example.net");
        for i in 0..hello.len() {
            assert_eq!(parse(&hello[..i]), Parse::Incomplete, "prefix of {i} bytes");
        }
        let frag = fragment(&hello, 64);
        assert_eq!(
            parse(&fragment(&hello, 1)),
            Parse::Invalid("ClientHello split into too many records")
        );
        for i in 0..frag.len() {
            assert_eq!(parse(&frag[..i]), Parse::Incomplete, "fragmented prefix of {i} bytes");
        }
    }

    #[test]
    fn garbage_is_invalid() {
        let cases: &[(&[u8], &str)] = &[
            (b"GET / HTTP/1.1\r\n", "not a TLS handshake record"),
            (b"\x16\x07", "not a TLS record version"),
            (b"\x16\x03\x01\x00\x00", "bad TLS record length"),
            (b"\x16\x03\x01\x40\x01", "bad TLS record length"),
            (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
            (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", "ClientHello too large"),
            (b"\x16\x03\x01\x00\x04\x01\x00\x00\x00", "malformed ClientHello"),
            (b"\x80\x2e\x01\x03\x01", "not a TLS handshake record"), // SSLv2 hello
        ];
        for (input, why) in cases {
            assert_eq!(parse(input), Parse::Invalid(why), "{input:?}");
        }
    }

    #[test]
    fn mutated_hellos_never_panic() {
        let hello = rustls_hello("web.example.net");
        // A small deterministic xorshift: every byte position flipped in
        // several ways, plus random truncations and splices.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..hello.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut m = hello.clone();
                m[i] ^= flip;
                let _ = parse(&m);
            }
        }
        for _ in 0..20_000 {
            let mut m = hello.clone();
            for _ in 0..(next() % 8) {
                let i = (next() as usize) % m.len();
                m[i] = next() as u8;
            }
            let cut = (next() as usize) % (m.len() + 1);
            let _ = parse(&m[..cut]);
        }
        for _ in 0..5_000 {
            let len = (next() % 600) as usize;
            let mut m: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if m.len() > 2 && next() % 2 == 0 {
                m[0] = 0x16;
                m[1] = 3;
            }
            let _ = parse(&m);
        }
    }
}
