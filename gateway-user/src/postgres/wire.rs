//! The `PostgreSQL` frontend/backend protocol (version 3) as the handler needs it (pure): the
//! startup packet, message framing, and the few messages it reads or rewrites (`Query`,
//! `Parse`, `Bind`, `RowDescription`, `DataRow`, `ErrorResponse`/`NoticeResponse`,
//! `CommandComplete`). Everything else is relayed as it came. Parsers take a message's body
//! (after its type byte and length) and fail with [`Malformed`] instead of panicking on any
//! input.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// The startup packet's protocol version 3.0 (`3 << 16`); minor versions 3.x are accepted.
pub const PROTOCOL_3: u32 = 196_608;
/// The largest startup packet a server accepts (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP: usize = 10_000;

/// A message that does not parse as its type says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed PostgreSQL {0} message")]
pub struct Malformed(pub &'static str);

impl From<Malformed> for io::Error {
    fn from(m: Malformed) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, m)
    }
}

/// One message as read: its type, with its body in the reader's buffer, or only its header
/// when the body is larger than the reader's limit (the caller copies such a body through
/// with [`copy_body`] or refuses it).
#[derive(Debug)]
pub enum Frame {
    Whole { tag: u8 },
    Large { tag: u8, len: usize },
}

/// Reads the startup packet's length-prefixed body (no type byte); `None` at a clean end.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(Malformed("startup").into());
    }
    let mut body = vec![0; len - 4];
    r.read_exact(&mut body).await?;
    Ok(Some(body))
}

/// Reads one message, its body into `body` (reused from message to message); `None` at a
/// clean end between messages. A body over `limit` bytes is left unread ([`Frame::Large`]).
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
    body: &mut Vec<u8>,
) -> io::Result<Option<Frame>> {
    let mut header = [0u8; 5];
    match r.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    r.read_exact(&mut header[1..]).await?;
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if len < 4 {
        return Err(Malformed("length of a").into());
    }
    let len = len - 4;
    if len > limit {
        return Ok(Some(Frame::Large { tag, len }));
    }
    body.clear();
    body.resize(len, 0);
    r.read_exact(body).await?;
    // A buffer that once held a large message does not keep its size.
    if body.capacity() > 1 << 20 && len < 1 << 16 {
        body.shrink_to(1 << 16);
    }
    Ok(Some(Frame::Whole { tag }))
}

/// Copies a [`Frame::Large`] message through: its header, then `len` bytes of body.
pub async fn copy_body<R, W>(r: &mut R, w: &mut W, tag: u8, len: usize) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&header(tag, len)).await?;
    let copied = tokio::io::copy(&mut r.take(len as u64), w).await?;
    if copied == len as u64 {
        Ok(())
    } else {
        Err(io::ErrorKind::UnexpectedEof.into())
    }
}

/// A message's type byte and length field, for a body of `len` bytes.
pub fn header(tag: u8, len: usize) -> [u8; 5] {
    let n = u32::try_from(len + 4).unwrap_or(u32::MAX).to_be_bytes();
    [tag, n[0], n[1], n[2], n[3]]
}

/// Appends a whole message to `out`.
pub fn put(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.extend_from_slice(&header(tag, body.len()));
    out.extend_from_slice(body);
}

/// The startup packet's protocol code (or request code).
pub fn startup_code(body: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(body.get(..4)?.try_into().ok()?))
}

/// The parameters of a protocol 3 startup packet (`user`, `database`, `application_name`, …).
pub fn startup_params(body: &[u8]) -> Result<Vec<(String, String)>, Malformed> {
    let mut cursor = Cursor::new(body.get(4..).ok_or(Malformed("startup"))?);
    let mut params = Vec::new();
    loop {
        let key = cursor.cstr().map_err(|_| Malformed("startup"))?;
        if key.is_empty() {
            return Ok(params);
        }
        let value = cursor.cstr().map_err(|_| Malformed("startup"))?;
        params.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
}

/// Reads a message body field by field.
pub struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, at: 0 }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let end = self.at.checked_add(n).ok_or(Malformed("field of a"))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(Malformed("field of a"))?;
        self.at = end;
        Ok(slice)
    }

    /// A NUL-terminated string, without its NUL.
    pub fn cstr(&mut self) -> Result<&'a [u8], Malformed> {
        let rest = &self.bytes[self.at..];
        let nul = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(Malformed("string of a"))?;
        self.at += nul + 1;
        Ok(&rest[..nul])
    }

    pub fn i16(&mut self) -> Result<i16, Malformed> {
        Ok(i16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or([0; 2]),
        ))
    }

    pub fn i32(&mut self) -> Result<i32, Malformed> {
        Ok(i32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    pub fn u32(&mut self) -> Result<u32, Malformed> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or([0; 4]),
        ))
    }

    /// A count (`int16`), refused when negative.
    fn count(&mut self) -> Result<usize, Malformed> {
        usize::try_from(self.i16()?).map_err(|_| Malformed("count of a"))
    }

    /// A length-prefixed value (`int32`, −1 = NULL).
    fn value(&mut self) -> Result<Option<&'a [u8]>, Malformed> {
        match self.i32()? {
            -1 => Ok(None),
            n => Ok(Some(self.take(
                usize::try_from(n).map_err(|_| Malformed("value length of a"))?,
            )?)),
        }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.bytes[self.at..];
        self.at = self.bytes.len();
        rest
    }

    fn end(&self, what: &'static str) -> Result<(), Malformed> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(Malformed(what))
        }
    }
}

/// `Query` ('Q'): the SQL text.
pub fn query(body: &[u8]) -> Result<&[u8], Malformed> {
    let mut c = Cursor::new(body);
    let text = c.cstr().map_err(|_| Malformed("Query"))?;
    c.end("Query")?;
    Ok(text)
}

pub fn encode_query(text: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(text.len() + 1);
    body.extend_from_slice(text);
    body.push(0);
    body
}

/// `Parse` ('P'): statement name, SQL text, and the parameter types as they came.
pub struct Parse<'a> {
    pub name: &'a [u8],
    pub query: &'a [u8],
    pub types: &'a [u8],
}

pub fn parse(body: &[u8]) -> Result<Parse<'_>, Malformed> {
    let mut c = Cursor::new(body);
    let name = c.cstr().map_err(|_| Malformed("Parse"))?;
    let query = c.cstr().map_err(|_| Malformed("Parse"))?;
    let types = c.rest();
    Ok(Parse { name, query, types })
}

impl Parse<'_> {
    pub fn encode(&self, query: &[u8]) -> Vec<u8> {
        let mut body = Vec::with_capacity(self.name.len() + query.len() + self.types.len() + 2);
        body.extend_from_slice(self.name);
        body.push(0);
        body.extend_from_slice(query);
        body.push(0);
        body.extend_from_slice(self.types);
        body
    }
}

/// `Bind` ('B'): portal, statement, parameter formats and values, result formats (raw).
pub struct Bind<'a> {
    pub portal: &'a [u8],
    pub statement: &'a [u8],
    pub formats: Vec<i16>,
    pub params: Vec<Option<&'a [u8]>>,
    pub results: &'a [u8],
}

pub fn bind(body: &[u8]) -> Result<Bind<'_>, Malformed> {
    let bad = |_| Malformed("Bind");
    let mut c = Cursor::new(body);
    let portal = c.cstr().map_err(bad)?;
    let statement = c.cstr().map_err(bad)?;
    let nformats = c.count().map_err(bad)?;
    let formats = (0..nformats)
        .map(|_| c.i16())
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    let nparams = c.count().map_err(bad)?;
    let params = (0..nparams)
        .map(|_| c.value())
        .collect::<Result<_, _>>()
        .map_err(bad)?;
    let results = c.rest();
    Ok(Bind {
        portal,
        statement,
        formats,
        params,
        results,
    })
}

impl Bind<'_> {
    /// Whether parameter `i` is sent as text (format 0): formats apply to all parameters
    /// when one is given, each its own when as many as parameters.
    pub fn is_text(&self, i: usize) -> bool {
        match self.formats.len() {
            0 => true,
            1 => self.formats[0] == 0,
            _ => self.formats.get(i) == Some(&0),
        }
    }

    pub fn encode(&self, params: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(self.portal);
        body.push(0);
        body.extend_from_slice(self.statement);
        body.push(0);
        put_count(&mut body, self.formats.len());
        for f in &self.formats {
            body.extend_from_slice(&f.to_be_bytes());
        }
        put_count(&mut body, params.len());
        for p in params {
            put_value(&mut body, p.as_deref());
        }
        body.extend_from_slice(self.results);
        body
    }
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&i16::try_from(n).unwrap_or(i16::MAX).to_be_bytes());
}

fn put_value(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
        Some(v) => {
            out.extend_from_slice(&i32::try_from(v.len()).unwrap_or(i32::MAX).to_be_bytes());
            out.extend_from_slice(v);
        }
    }
}

/// One column of a `RowDescription` ('T').
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub type_oid: u32,
    /// 0 text, 1 binary.
    pub format: i16,
}

pub fn row_description(body: &[u8]) -> Result<Vec<Column>, Malformed> {
    let bad = |_| Malformed("RowDescription");
    let mut c = Cursor::new(body);
    let n = c.count().map_err(bad)?;
    let mut columns = Vec::with_capacity(n.min(1_600));
    for _ in 0..n {
        let name = String::from_utf8_lossy(c.cstr().map_err(bad)?).into_owned();
        let _table = c.u32().map_err(bad)?;
        let _attnum = c.i16().map_err(bad)?;
        let type_oid = c.u32().map_err(bad)?;
        let _typlen = c.i16().map_err(bad)?;
        let _typmod = c.i32().map_err(bad)?;
        let format = c.i16().map_err(bad)?;
        columns.push(Column {
            name,
            type_oid,
            format,
        });
    }
    c.end("RowDescription")?;
    Ok(columns)
}

/// `DataRow` ('D'): each column's value, `None` for NULL.
pub fn data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, Malformed> {
    let bad = |_| Malformed("DataRow");
    let mut c = Cursor::new(body);
    let n = c.count().map_err(bad)?;
    let values = (0..n)
        .map(|_| c.value())
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    c.end("DataRow")?;
    Ok(values)
}

pub fn encode_data_row<'a>(values: impl ExactSizeIterator<Item = Option<&'a [u8]>>) -> Vec<u8> {
    let mut body = Vec::new();
    put_count(&mut body, values.len());
    for v in values {
        put_value(&mut body, v);
    }
    body
}

/// The fields of an `ErrorResponse` ('E') or `NoticeResponse` ('N'): (code, value).
pub fn fields(body: &[u8]) -> Result<Vec<(u8, &[u8])>, Malformed> {
    let mut c = Cursor::new(body);
    let mut fields = Vec::new();
    loop {
        let code = *c
            .take(1)
            .map_err(|_| Malformed("ErrorResponse"))?
            .first()
            .unwrap_or(&0);
        if code == 0 {
            c.end("ErrorResponse")?;
            return Ok(fields);
        }
        fields.push((code, c.cstr().map_err(|_| Malformed("ErrorResponse"))?));
    }
}

pub fn encode_fields<'a>(fields: impl IntoIterator<Item = (u8, &'a [u8])>) -> Vec<u8> {
    let mut body = Vec::new();
    for (code, value) in fields {
        body.push(code);
        // A NUL inside a value would end it early: none can come from a parsed field, and a
        // masked one never holds one.
        body.extend(value.iter().filter(|&&b| b != 0));
        body.push(0);
    }
    body.push(0);
    body
}

/// A whole `ErrorResponse` message from the gateway: `ERROR`, SQLSTATE `code`, `message`.
pub fn error_response(code: &str, message: &str, detail: Option<&str>) -> Vec<u8> {
    let mut fields: Vec<(u8, &[u8])> = vec![
        (b'S', b"ERROR"),
        (b'V', b"ERROR"),
        (b'C', code.as_bytes()),
        (b'M', message.as_bytes()),
    ];
    if let Some(detail) = detail {
        fields.push((b'D', detail.as_bytes()));
    }
    let mut out = Vec::new();
    put(&mut out, b'E', &encode_fields(fields));
    out
}

/// The same as a `FATAL` error: the gateway closes the connection after it.
pub fn fatal_response(code: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::new();
    put(
        &mut out,
        b'E',
        &encode_fields([
            (b'S', b"FATAL".as_slice()),
            (b'V', b"FATAL"),
            (b'C', code.as_bytes()),
            (b'M', message.as_bytes()),
        ]),
    );
    out
}

/// `CommandComplete` ('C'): the command tag (`SELECT 3`, `INSERT 0 1`, …).
pub fn command_tag(body: &[u8]) -> Result<&[u8], Malformed> {
    let mut c = Cursor::new(body);
    let tag = c.cstr().map_err(|_| Malformed("CommandComplete"))?;
    c.end("CommandComplete")?;
    Ok(tag)
}

/// Type OIDs whose binary format is their text (UTF-8 in a UTF-8 database): `text`,
/// `varchar`, `bpchar`, `name`, `json`, `xml`, `unknown`. `jsonb`'s binary form is a version
/// byte (1) followed by its text.
pub fn text_like(type_oid: u32) -> bool {
    matches!(type_oid, 25 | 1043 | 1042 | 19 | 114 | 142 | 705)
}
pub const JSONB: u32 = 3802;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let body = {
            let mut body = b"p\0s1\0".to_vec();
            body.extend_from_slice(&1i16.to_be_bytes());
            body.extend_from_slice(&0i16.to_be_bytes());
            body.extend_from_slice(&2i16.to_be_bytes());
            put_value(&mut body, Some(b"a@b.example"));
            put_value(&mut body, None);
            body.extend_from_slice(&0i16.to_be_bytes());
            body
        };
        let b = bind(&body).unwrap();
        assert_eq!((b.portal, b.statement), (&b"p"[..], &b"s1"[..]));
        assert_eq!(b.params, [Some(&b"a@b.example"[..]), None]);
        assert!(b.is_text(0) && b.is_text(1));
        let encoded = b.encode(&[Some(b"x".to_vec()), None]);
        let again = bind(&encoded).unwrap();
        assert_eq!(again.params, [Some(&b"x"[..]), None]);

        let row = encode_data_row([Some(&b"1"[..]), None, Some(b"")].into_iter());
        assert_eq!(
            data_row(&row).unwrap(),
            [Some(&b"1"[..]), None, Some(&b""[..])]
        );

        let e = error_response("42501", "blocked", Some("rule x"));
        let fields = fields(&e[5..]).unwrap();
        assert!(fields.contains(&(b'C', &b"42501"[..])));
        assert!(fields.contains(&(b'D', &b"rule x"[..])));
        assert_eq!(query(&encode_query(b"select 1")).unwrap(), b"select 1");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bytes in [
            &b""[..],
            b"\xff\xff",
            b"\0\x02\xff\xff\xff\xfe",
            b"\x7f\xff\0\0\0\x05x",
            b"no nul",
            b"\0\x01a\0",
        ] {
            let _ = data_row(bytes);
            let _ = row_description(bytes);
            let _ = bind(bytes);
            let _ = parse(bytes);
            let _ = fields(bytes);
            let _ = query(bytes);
            let _ = startup_params(bytes);
        }
        assert!(data_row(b"\0\x01\0\0\0\x09abc").is_err());
        assert!(query(b"select 1\0extra").is_err());
    }
}
