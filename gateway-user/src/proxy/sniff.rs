//! Protocol sniffing: the first bytes of an accepted connection say what it speaks. The bytes
//! are read (bounded in size and time) and handed on with the stream in a [`ClientIo`], which
//! replays them first, so no handler misses a byte.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use crate::tls::hello::{self, ClientHello};

/// What a connection speaks, from its first bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Tls(ClientHello),
    /// Starts with a TLS record but is not a usable ClientHello.
    BadTls(&'static str),
    Http,
    /// `PostgreSQL` startup, SSLRequest, GSSENCRequest or CancelRequest.
    Postgres,
    Other,
}

/// HTTP/1.x methods and the HTTP/2 prior-knowledge preface.
const HTTP_STARTS: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2.0",
];

const PG_SSL_REQUEST: u32 = 80_877_103;
const PG_GSSENC_REQUEST: u32 = 80_877_104;
const PG_CANCEL_REQUEST: u32 = 80_877_102;
const PG_PROTOCOL_3: u32 = 196_608;

/// Classifies the first bytes; `None` = more bytes are needed to tell.
pub fn classify(bytes: &[u8]) -> Option<Kind> {
    let first = *bytes.first()?;
    if first == 22 {
        if !hello::looks_like_tls(bytes) {
            return Some(Kind::Other);
        }
        return match hello::parse(bytes) {
            hello::Parse::Hello(hello) => Some(Kind::Tls(hello)),
            hello::Parse::Incomplete => None,
            hello::Parse::Invalid(reason) => Some(Kind::BadTls(reason)),
        };
    }
    let mut undecided = false;
    for start in HTTP_STARTS {
        let n = start.len().min(bytes.len());
        if bytes[..n] == start[..n] {
            if bytes.len() >= start.len() {
                return Some(Kind::Http);
            }
            undecided = true;
        }
    }
    if undecided {
        return None;
    }
    if first == 0 {
        if bytes.len() < 8 {
            return None;
        }
        let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let code = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if (8..=10_000).contains(&len)
            && matches!(
                code,
                PG_SSL_REQUEST | PG_GSSENC_REQUEST | PG_CANCEL_REQUEST | PG_PROTOCOL_3
            )
        {
            return Some(Kind::Postgres);
        }
    }
    Some(Kind::Other)
}

/// What sniffing found.
#[derive(Debug)]
pub enum Sniffed {
    Kind(Kind),
    /// Nothing arrived in time: a server-speaks-first protocol, or an idle client.
    Silent,
    /// Some bytes arrived, then nothing more in time (or the client closed): a truncated
    /// handshake or a slow client.
    Stalled(&'static str),
}

/// Reads until the first bytes tell the protocol, at most [`hello::MAX_HELLO`] bytes and
/// `wait` in all. The bytes read are left in `buf`.
pub async fn sniff(stream: &mut TcpStream, buf: &mut Vec<u8>, wait: Duration) -> Sniffed {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if buf.len() >= hello::MAX_HELLO {
            return Sniffed::Kind(Kind::BadTls("ClientHello too large"));
        }
        buf.reserve(4096);
        let read = tokio::time::timeout_at(deadline, stream.read_buf(buf)).await;
        match read {
            Err(_) if buf.is_empty() => return Sniffed::Silent,
            Err(_) => return Sniffed::Stalled("the client stopped sending mid-handshake"),
            Ok(Ok(0)) | Ok(Err(_)) if buf.is_empty() => {
                return Sniffed::Stalled("the client closed before sending anything");
            }
            Ok(Ok(0) | Err(_)) => {
                return match classify(buf) {
                    Some(kind) => Sniffed::Kind(kind),
                    None => Sniffed::Stalled("the client closed mid-handshake"),
                };
            }
            Ok(Ok(_)) => {
                if let Some(kind) = classify(buf) {
                    return Sniffed::Kind(kind);
                }
            }
        }
    }
}

/// The client's side of a session for protocol handlers: replays the sniffed bytes first and
/// counts bytes each way (`up` = from the agent).
#[derive(Debug)]
pub struct ClientIo {
    prefix: Vec<u8>,
    consumed: usize,
    stream: TcpStream,
    pub counters: Arc<Counters>,
}

#[derive(Debug, Default)]
pub struct Counters {
    pub up: AtomicU64,
    pub down: AtomicU64,
}

impl ClientIo {
    pub fn new(stream: TcpStream, prefix: Vec<u8>) -> Self {
        Self {
            prefix,
            consumed: 0,
            stream,
            counters: Arc::default(),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The socket, and the sniffed bytes not read yet (for a handler that relays raw after
    /// all).
    pub fn into_parts(mut self) -> (TcpStream, Vec<u8>) {
        let rest = self.prefix.split_off(self.consumed);
        (self.stream, rest)
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.consumed < this.prefix.len() {
            let rest = &this.prefix[this.consumed..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.consumed += n;
            if this.consumed == this.prefix.len() {
                this.prefix = Vec::new();
                this.consumed = 0;
            }
            this.counters.up.fetch_add(n as u64, Ordering::Relaxed);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.counters.up.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.counters.down.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = poll {
            this.counters.down.fetch_add(n as u64, Ordering::Relaxed);
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b""), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GET /x HTTP/1.1\r\n"), Some(Kind::Http));
        assert_eq!(classify(b"PRI * HTTP/2.0\r\n"), Some(Kind::Http));
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"GETX"), Some(Kind::Other));
        assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), Some(Kind::Other));
        assert_eq!(
            classify(&[0, 0, 0, 8, 4, 210, 22, 47]),
            Some(Kind::Postgres)
        );
        assert_eq!(
            classify(&[0, 0, 0, 40, 0, 3, 0, 0, b'u']),
            Some(Kind::Postgres)
        );
        assert_eq!(classify(&[0, 0, 0]), None);
        assert_eq!(classify(&[0, 0, 0, 8, 1, 2, 3, 4]), Some(Kind::Other));
        assert_eq!(classify(&[22, 3, 1]), None);
        assert_eq!(classify(&[22, 9, 9, 9]), Some(Kind::Other));
        let hello = crate::tls::hello::tests::build(
            Some("a.test"),
            0x0303,
            &[0x0304],
            &[0x1301],
            &["h2"],
            16_384,
        );
        assert!(
            matches!(classify(&hello), Some(Kind::Tls(h)) if h.sni.as_deref() == Some("a.test"))
        );
        assert_eq!(classify(&hello[..hello.len() - 1]), None);
    }
}
