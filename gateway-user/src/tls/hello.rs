//! TLS ClientHello parsing (pure, no I/O; fuzzed): what a client offered, read from the first
//! bytes of a connection before any handshake is answered, so that every TLS session, the
//! refused ones too, is recorded with its SNI, versions, cipher suites and ALPN.
//!
//! The ClientHello may span several handshake records; [`parse`] says [`Parse::Incomplete`]
//! until the whole message is there. Only what the structure promises is trusted: every length
//! is checked against what is left, and GREASE values (RFC 8701) are dropped.

use std::fmt;

/// The largest ClientHello accepted (several records; real ones are under 2 KiB, post-quantum
/// key shares included).
pub const MAX_HELLO: usize = 32 * 1024;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

/// What a client offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// The host name of the `server_name` extension.
    pub sni: Option<String>,
    /// Offered versions, best first: `supported_versions` when present, else the legacy
    /// version field (TLS 1.2 and older clients).
    pub versions: Vec<u16>,
    pub cipher_suites: Vec<u16>,
    /// ALPN protocol names (e.g. `h2`, `http/1.1`).
    pub alpn: Vec<String>,
}

/// The result of parsing the bytes received so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parse {
    Hello(ClientHello),
    /// More bytes are needed.
    Incomplete,
    /// Not a ClientHello; the reason.
    Invalid(&'static str),
}

/// Whether `bytes` start like a TLS handshake record (the sniffer's test).
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [CONTENT_HANDSHAKE, 3, minor, ..] if *minor <= 4)
        || bytes == [CONTENT_HANDSHAKE]
        || bytes == [CONTENT_HANDSHAKE, 3]
}

/// Parses a ClientHello from the first bytes of a connection.
pub fn parse(bytes: &[u8]) -> Parse {
    // Reassemble the handshake message from consecutive handshake records.
    let mut message = Vec::new();
    let mut rest = bytes;
    loop {
        if rest.len() < 5 {
            return Parse::Incomplete;
        }
        if rest[0] != CONTENT_HANDSHAKE {
            return Parse::Invalid("not a TLS handshake record");
        }
        if rest[1] != 3 {
            return Parse::Invalid("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        if len == 0 || len > 16_384 + 256 {
            return Parse::Invalid("TLS record length out of range");
        }
        if rest.len() < 5 + len {
            if bytes.len() >= MAX_HELLO {
                return Parse::Invalid("ClientHello too large");
            }
            return Parse::Incomplete;
        }
        message.extend_from_slice(&rest[5..5 + len]);
        rest = &rest[5 + len..];
        if message.len() >= 4 {
            if message[0] != HANDSHAKE_CLIENT_HELLO {
                return Parse::Invalid("first handshake message is not a ClientHello");
            }
            let body = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if body > MAX_HELLO {
                return Parse::Invalid("ClientHello too large");
            }
            if message.len() >= 4 + body {
                return match client_hello(&message[4..4 + body]) {
                    Some(hello) => Parse::Hello(hello),
                    None => Parse::Invalid("malformed ClientHello"),
                };
            }
        }
    }
}

/// A cursor that refuses to read past its end.
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
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    /// A vector with a `len`-byte length prefix.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()?;
        self.take(usize::from(n))
    }

    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()?;
        self.take(usize::from(n))
    }
}

fn is_grease(value: u16) -> bool {
    value & 0x0f0f == 0x0a0a && value >> 8 == value & 0xff
}

fn client_hello(body: &[u8]) -> Option<ClientHello> {
    let mut r = Reader(body);
    let legacy_version = r.u16()?;
    r.take(32)?; // random
    let session_id = r.vec8()?;
    if session_id.len() > 32 {
        return None;
    }
    let suites = r.vec16()?;
    if suites.len() % 2 != 0 || suites.is_empty() {
        return None;
    }
    let cipher_suites = suites
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .filter(|s| !is_grease(*s))
        .collect();
    r.vec8()?; // compression methods
    let mut hello = ClientHello {
        cipher_suites,
        ..ClientHello::default()
    };
    // Extensions are optional (very old clients send none).
    if !r.0.is_empty() {
        let mut exts = Reader(r.vec16()?);
        while !exts.0.is_empty() {
            let kind = exts.u16()?;
            let mut data = Reader(exts.vec16()?);
            match kind {
                EXT_SERVER_NAME => hello.sni = server_name(&mut data)?,
                EXT_ALPN => {
                    let mut list = Reader(data.vec16()?);
                    while !list.0.is_empty() {
                        let name = list.vec8()?;
                        hello.alpn.push(String::from_utf8_lossy(name).into_owned());
                    }
                }
                EXT_SUPPORTED_VERSIONS => {
                    let list = data.vec8()?;
                    if list.len() % 2 != 0 {
                        return None;
                    }
                    hello.versions = list
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .filter(|v| !is_grease(*v))
                        .collect();
                }
                _ => {}
            }
        }
    }
    if hello.versions.is_empty() {
        hello.versions.push(legacy_version);
    }
    Some(hello)
}

/// The host name of a `server_name` extension; `Some(None)` when it names no host.
fn server_name(data: &mut Reader<'_>) -> Option<Option<String>> {
    let mut list = Reader(data.vec16()?);
    while !list.0.is_empty() {
        let kind = list.u8()?;
        let name = list.vec16()?;
        if kind == 0 {
            // RFC 6066: ASCII host name, no trailing dot; anything else is not a usable SNI.
            let valid = !name.is_empty()
                && name
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
            return Some(valid.then(|| String::from_utf8_lossy(name).to_ascii_lowercase()));
        }
    }
    Some(None)
}

/// `TLSv1.3` and friends, for recording.
pub fn version_name(version: u16) -> String {
    match version {
        0x0304 => "TLSv1.3".into(),
        0x0303 => "TLSv1.2".into(),
        0x0302 => "TLSv1.1".into(),
        0x0301 => "TLSv1.0".into(),
        0x0300 => "SSLv3".into(),
        other => format!("0x{other:04x}"),
    }
}

/// rustls' name of a cipher suite (`TLS13_AES_128_GCM_SHA256`), or its number.
pub fn suite_name(suite: u16) -> String {
    let name = format!("{:?}", rustls::CipherSuite::from(suite));
    if name.starts_with("TLS") {
        name
    } else {
        format!("0x{suite:04x}")
    }
}

impl fmt::Display for ClientHello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let versions: Vec<String> = self.versions.iter().map(|v| version_name(*v)).collect();
        write!(
            f,
            "sni={} versions=[{}] suites={} alpn=[{}]",
            self.sni.as_deref().unwrap_or("-"),
            versions.join(","),
            self.cipher_suites.len(),
            self.alpn.join(",")
        )
    }
}

impl ClientHello {
    /// What the client offered, as recorded in the session.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "sni": self.sni,
            "versions": self.versions.iter().map(|v| version_name(*v)).collect::<Vec<_>>(),
            "cipher_suites": self.cipher_suites.iter().map(|s| suite_name(*s)).collect::<Vec<_>>(),
            "alpn": self.alpn,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ClientHello record: `versions` in `supported_versions` (legacy field 1.2 when
    /// given, else `legacy`), split into records of at most `record` bytes.
    pub(crate) fn build(
        sni: Option<&str>,
        legacy: u16,
        versions: &[u16],
        suites: &[u16],
        alpn: &[&str],
        record: usize,
    ) -> Vec<u8> {
        let mut exts = Vec::new();
        if let Some(name) = sni {
            let mut entry = vec![0u8];
            entry.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
            entry.extend_from_slice(name.as_bytes());
            push_ext(&mut exts, EXT_SERVER_NAME, &vec16(&entry));
        }
        if !alpn.is_empty() {
            let mut list = Vec::new();
            for p in alpn {
                list.push(u8::try_from(p.len()).unwrap());
                list.extend_from_slice(p.as_bytes());
            }
            push_ext(&mut exts, EXT_ALPN, &vec16(&list));
        }
        if !versions.is_empty() {
            let mut list = vec![u8::try_from(versions.len() * 2).unwrap()];
            for v in versions {
                list.extend_from_slice(&v.to_be_bytes());
            }
            push_ext(&mut exts, EXT_SUPPORTED_VERSIONS, &list);
        }
        let mut body = Vec::new();
        body.extend_from_slice(&legacy.to_be_bytes());
        body.extend_from_slice(&[7u8; 32]);
        body.push(0);
        let mut s = Vec::new();
        for suite in suites {
            s.extend_from_slice(&suite.to_be_bytes());
        }
        body.extend_from_slice(&vec16(&s));
        body.extend_from_slice(&[1, 0]);
        body.extend_from_slice(&vec16(&exts));
        let mut message = vec![HANDSHAKE_CLIENT_HELLO];
        message.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes()[1..]);
        message.extend_from_slice(&body);
        let mut out = Vec::new();
        for chunk in message.chunks(record) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&u16::try_from(chunk.len()).unwrap().to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    fn vec16(data: &[u8]) -> Vec<u8> {
        let mut out = u16::try_from(data.len()).unwrap().to_be_bytes().to_vec();
        out.extend_from_slice(data);
        out
    }

    fn push_ext(exts: &mut Vec<u8>, kind: u16, data: &[u8]) {
        exts.extend_from_slice(&kind.to_be_bytes());
        exts.extend_from_slice(&vec16(data));
    }

    #[test]
    fn parses_sni_versions_suites_alpn() {
        let bytes = build(
            Some("API.Example.test"),
            0x0303,
            &[0x1a1a, 0x0304, 0x0303],
            &[0x2a2a, 0x1302, 0x1301, 0xc02f],
            &["h2", "http/1.1"],
            16_384,
        );
        let Parse::Hello(hello) = parse(&bytes) else {
            panic!("not parsed")
        };
        assert_eq!(hello.sni.as_deref(), Some("api.example.test"));
        assert_eq!(hello.versions, vec![0x0304, 0x0303]);
        assert_eq!(hello.cipher_suites, vec![0x1302, 0x1301, 0xc02f]);
        assert_eq!(hello.alpn, vec!["h2", "http/1.1"]);
        let json = hello.to_json();
        assert_eq!(json["versions"][0], "TLSv1.3");
        assert_eq!(json["cipher_suites"][0], "TLS13_AES_256_GCM_SHA384");
    }

    #[test]
    fn legacy_clients_and_split_records() {
        let bytes = build(None, 0x0302, &[], &[0x002f], &[], 16);
        assert_eq!(bytes.len(), 47 + 3 * 5, "47 bytes in three records");
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Parse::Incomplete, "cut at {cut}");
        }
        let Parse::Hello(hello) = parse(&bytes) else {
            panic!("not parsed")
        };
        assert_eq!(hello.sni, None);
        assert_eq!(hello.versions, vec![0x0302]);
        assert_eq!(version_name(hello.versions[0]), "TLSv1.1");
    }

    #[test]
    fn rejects_garbage_and_lies() {
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\n"),
            Parse::Invalid("not a TLS handshake record")
        );
        assert!(looks_like_tls(&[22, 3, 1, 0, 5]));
        assert!(!looks_like_tls(b"GET"));
        let mut bytes = build(Some("a.test"), 0x0303, &[0x0304], &[0x1301], &[], 16_384);
        // A length that points past the message.
        let n = bytes.len();
        bytes[n - 3] = 0xff;
        assert!(matches!(parse(&bytes), Parse::Invalid(_)));
        // A ServerHello is not a ClientHello.
        let mut server = build(None, 0x0303, &[], &[0x1301], &[], 16_384);
        server[5] = 2;
        assert!(matches!(parse(&server), Parse::Invalid(_)));
        // Random bytes never panic.
        let mut seed = 0x1234_5678_u32;
        for _ in 0..2_000 {
            let bytes: Vec<u8> = (0..64)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed.to_le_bytes()[0]
                })
                .collect();
            let mut framed = vec![22, 3, 1, 0, 64];
            framed.extend_from_slice(&bytes);
            let _ = parse(&framed);
        }
    }
}
