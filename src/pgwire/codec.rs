//! PostgreSQL protocol framing (v3): reading length-prefixed messages with bounds, and building
//! the backend messages homeport writes itself (errors, parameter statuses, synthesized results
//! for `SHOW homeport.*`). See <https://www.postgresql.org/docs/15/protocol-message-formats.html>.
//!
//! A length prefix is never trusted before it is checked against a limit: a client claiming a
//! 2 GiB message gets an error, not an allocation.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest message accepted from a client or a server (PostgreSQL's own limit is 1 GiB; a
/// sidecar has no business buffering more than this).
pub const MAX_MESSAGE: usize = 64 << 20;
/// Largest startup packet (PostgreSQL uses 10000 bytes).
pub const MAX_STARTUP: usize = 10_000;
/// Largest password or SASL message: before a client has authenticated nothing bigger is
/// buffered. A SCRAM message is about 200 bytes.
pub const MAX_AUTH: usize = 4096;

pub const SSL_REQUEST: i32 = 80_877_103;
pub const GSSENC_REQUEST: i32 = 80_877_104;
pub const CANCEL_REQUEST: i32 = 80_877_102;
pub const PROTOCOL_3: i32 = 196_608;

/// One tagged protocol message: the tag byte and the body (without the length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

impl Message {
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Message {
        Message {
            tag,
            body: body.into(),
        }
    }

    /// Appends the message in wire form.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.put_u8(self.tag);
        out.put_i32((self.body.len() + 4) as i32);
        out.put_slice(&self.body);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("connection closed")]
    Closed,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("invalid message length {len} for message '{tag}'")]
    BadLength { tag: char, len: i64 },
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("{0}")]
    Unsupported(String),
    #[error("the probes found the server unreachable while waiting for its answer")]
    Unreachable,
}

/// A buffered reader that cuts messages out of one shared buffer: a message body is a slice of
/// what was read (no allocation or copy per message), and one `read` usually brings several.
///
/// The buffer grows from `initial` bytes: a read that fills it doubles the next read's size (up to
/// [`MAX_CHUNK`]), and a message longer than the buffer gets room for all of it. [`shrink`] gives
/// a grown buffer back once it is empty, so a client that sat idle after a large message holds
/// `initial` bytes again, not its peak (the per-client memory of 1,000 idle clients).
///
/// [`shrink`]: FramedReader::shrink
pub struct FramedReader<R> {
    inner: R,
    buf: BytesMut,
    /// How much the next read asks for at least.
    chunk: usize,
    initial: usize,
    /// The buffer was allocated past `initial` (a long message or a fast sender).
    grown: bool,
}

/// Read size of a client connection's reader: protocol messages of most statements fit.
pub const CLIENT_CHUNK: usize = 1024;
/// Read size of a server connection's reader: result rows arrive in bulk.
pub const SERVER_CHUNK: usize = 16 * 1024;
/// The largest read size a reader grows to.
pub const MAX_CHUNK: usize = 64 * 1024;

impl<R: AsyncRead + Unpin> FramedReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_chunk(inner, SERVER_CHUNK)
    }

    /// A reader whose buffer starts at `initial` bytes (allocated at the first read).
    pub fn with_chunk(inner: R, initial: usize) -> Self {
        FramedReader {
            inner,
            buf: BytesMut::new(),
            chunk: initial,
            initial,
            grown: false,
        }
    }

    /// Frees a grown buffer that holds no unread bytes; the next read starts small again. The
    /// memory is returned once the messages cut from it are dropped.
    pub fn shrink(&mut self) {
        if self.grown && self.buf.is_empty() {
            self.buf = BytesMut::new();
            self.chunk = self.initial;
            self.grown = false;
        }
    }

    async fn fill(&mut self, want: usize) -> Result<(), ProtocolError> {
        while self.buf.len() < want {
            let missing = want - self.buf.len();
            if self.buf.capacity() - self.buf.len() < missing {
                let room = missing.max(self.chunk);
                self.grown |= room > self.initial;
                self.buf.reserve(room);
            }
            let spare = self.buf.capacity() - self.buf.len();
            let n = self.inner.read_buf(&mut self.buf).await?;
            if n == 0 {
                return Err(ProtocolError::Closed);
            }
            if n == spare && self.chunk < MAX_CHUNK {
                self.chunk *= 2;
            }
        }
        Ok(())
    }

    /// The next tagged message.
    pub async fn next(&mut self) -> Result<Message, ProtocolError> {
        self.next_limited(MAX_MESSAGE).await
    }

    /// The next tagged message, refused (before its body is read) when its body is over `max`.
    pub async fn next_limited(&mut self, max: usize) -> Result<Message, ProtocolError> {
        self.fill(5).await?;
        let tag = self.buf[0];
        let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        if len < 4 || len as usize - 4 > max {
            return Err(ProtocolError::BadLength {
                tag: tag as char,
                len: len.into(),
            });
        }
        let total = 1 + len as usize;
        self.fill(total).await?;
        let mut frame = self.buf.split_to(total);
        let _ = frame.split_to(5);
        Ok(Message {
            tag,
            body: frame.freeze(),
        })
    }

    /// The next tagged message if it is one of `tags` and already wholly in the buffer (nothing
    /// is read from the stream): what arrived together with the last message. Anything else,
    /// a malformed length included, is left for [`next`](FramedReader::next).
    pub fn buffered(&mut self, tags: &[u8]) -> Option<Message> {
        let head = self.buf.get(..5)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        if !tags.contains(&head[0])
            || len < 4
            || len as usize - 4 > MAX_MESSAGE
            || self.buf.len() < 1 + len as usize
        {
            return None;
        }
        let tag = head[0];
        let mut frame = self.buf.split_to(1 + len as usize);
        let _ = frame.split_to(5);
        Some(Message {
            tag,
            body: frame.freeze(),
        })
    }

    /// An untagged startup-phase packet: (code, body after the code).
    pub async fn startup(&mut self) -> Result<(i32, Bytes), ProtocolError> {
        self.fill(4).await?;
        let len = i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if !(8..=MAX_STARTUP as i32).contains(&len) {
            return Err(ProtocolError::BadLength {
                tag: '0',
                len: len.into(),
            });
        }
        self.fill(len as usize).await?;
        let mut frame = self.buf.split_to(len as usize);
        let _ = frame.split_to(4);
        let code = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        Ok((code, frame.freeze().slice(4..)))
    }
}

/// Reads one tagged message.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, ProtocolError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    let tag = head[0];
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len < 4 || len as usize - 4 > MAX_MESSAGE {
        return Err(ProtocolError::BadLength {
            tag: tag as char,
            len: len.into(),
        });
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtocolError::Closed,
        _ => e.into(),
    })?;
    Ok(Message {
        tag,
        body: body.into(),
    })
}

/// Reads an untagged startup-phase packet: (code, body after the code).
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> Result<(i32, Bytes), ProtocolError> {
    let len = match r.read_i32().await {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProtocolError::Closed);
        }
        Err(e) => return Err(e.into()),
    };
    if !(8..=MAX_STARTUP as i32).contains(&len) {
        return Err(ProtocolError::BadLength {
            tag: '0',
            len: len.into(),
        });
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body).await?;
    let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
    Ok((code, Bytes::from(body).slice(4..)))
}

/// Parses the `key\0value\0...\0` parameters of a StartupMessage.
pub fn startup_params(body: &[u8]) -> Result<Vec<(String, String)>, ProtocolError> {
    let mut out = Vec::new();
    let mut parts = body.split(|b| *b == 0);
    loop {
        let key = parts.next().ok_or(ProtocolError::Malformed("startup"))?;
        if key.is_empty() {
            break;
        }
        let value = parts.next().ok_or(ProtocolError::Malformed("startup"))?;
        let key =
            String::from_utf8(key.to_vec()).map_err(|_| ProtocolError::Malformed("startup"))?;
        let value =
            String::from_utf8(value.to_vec()).map_err(|_| ProtocolError::Malformed("startup"))?;
        out.push((key, value));
    }
    Ok(out)
}

/// A reader over a message body: NUL-terminated strings and big-endian integers.
pub struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    pub fn cstr(&mut self) -> Result<&'a str, ProtocolError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or(ProtocolError::Malformed(self.what))?;
        let s = std::str::from_utf8(&self.buf[..end])
            .map_err(|_| ProtocolError::Malformed(self.what))?;
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// A NUL-terminated SQL text in the client's encoding, which need not be UTF-8 (`SET
    /// client_encoding TO latin9`): bytes that are not UTF-8 become U+FFFD. homeport only
    /// classifies the text; the client's bytes go to the server unchanged.
    pub fn text(&mut self) -> Result<std::borrow::Cow<'a, str>, ProtocolError> {
        let end = self
            .buf
            .iter()
            .position(|b| *b == 0)
            .ok_or(ProtocolError::Malformed(self.what))?;
        let s = String::from_utf8_lossy(&self.buf[..end]);
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    pub fn i16(&mut self) -> Result<i16, ProtocolError> {
        let (head, rest) = self
            .buf
            .split_at_checked(2)
            .ok_or(ProtocolError::Malformed(self.what))?;
        self.buf = rest;
        Ok(i16::from_be_bytes([head[0], head[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, ProtocolError> {
        let (head, rest) = self
            .buf
            .split_at_checked(4)
            .ok_or(ProtocolError::Malformed(self.what))?;
        self.buf = rest;
        Ok(i32::from_be_bytes([head[0], head[1], head[2], head[3]]))
    }

    pub fn u8(&mut self) -> Result<u8, ProtocolError> {
        let (&b, rest) = self
            .buf
            .split_first()
            .ok_or(ProtocolError::Malformed(self.what))?;
        self.buf = rest;
        Ok(b)
    }

    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

/// ErrorResponse with severity, SQLSTATE and message (`severity` is ERROR or FATAL).
pub fn error_response(severity: &str, code: &str, message: &str) -> Message {
    error_response_with_detail(severity, code, message, None)
}

/// ErrorResponse with an optional DETAIL field (`D`), which psql and drivers show apart.
pub fn error_response_with_detail(
    severity: &str,
    code: &str,
    message: &str,
    detail: Option<&str>,
) -> Message {
    let mut b = BytesMut::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        b.put_u8(field);
        put_cstr(&mut b, value);
    }
    if let Some(detail) = detail {
        b.put_u8(b'D');
        put_cstr(&mut b, detail);
    }
    b.put_u8(0);
    Message::new(b'E', b.freeze())
}

pub fn parameter_status(name: &str, value: &str) -> Message {
    let mut b = BytesMut::new();
    put_cstr(&mut b, name);
    put_cstr(&mut b, value);
    Message::new(b'S', b.freeze())
}

/// Writes a ParameterStatus straight into `out` (the login sends a dozen at once).
pub fn put_parameter_status(out: &mut BytesMut, name: &str, value: &str) {
    out.reserve(7 + name.len() + value.len());
    out.put_u8(b'S');
    out.put_i32((4 + name.len() + 1 + value.len() + 1) as i32);
    put_cstr(out, name);
    put_cstr(out, value);
}

pub fn ready_for_query(status: u8) -> Message {
    Message::new(b'Z', vec![status])
}

pub fn command_complete(tag: &str) -> Message {
    let mut b = BytesMut::new();
    put_cstr(&mut b, tag);
    Message::new(b'C', b.freeze())
}

pub fn auth_ok() -> Message {
    Message::new(b'R', 0i32.to_be_bytes().to_vec())
}

pub fn backend_key_data(pid: i32, secret: i32) -> Message {
    let mut b = BytesMut::new();
    b.put_i32(pid);
    b.put_i32(secret);
    Message::new(b'K', b.freeze())
}

/// RowDescription of one text column.
pub fn text_row_description(column: &str) -> Message {
    let mut b = BytesMut::new();
    b.put_i16(1);
    put_cstr(&mut b, column);
    b.put_i32(0); // table oid
    b.put_i16(0); // column number
    b.put_u32(25); // text
    b.put_i16(-1);
    b.put_i32(-1);
    b.put_i16(0); // text format
    Message::new(b'T', b.freeze())
}

pub fn text_data_row(value: &str) -> Message {
    let mut b = BytesMut::new();
    b.put_i16(1);
    b.put_i32(value.len() as i32);
    b.put_slice(value.as_bytes());
    Message::new(b'D', b.freeze())
}

/// A simple-protocol Query message.
pub fn query(sql: &str) -> Message {
    let mut b = BytesMut::with_capacity(sql.len() + 1);
    put_cstr(&mut b, sql);
    Message::new(b'Q', b.freeze())
}

/// The first column of a DataRow body as text (`None` for NULL or a malformed row).
pub fn first_value(body: &[u8]) -> Option<&str> {
    let mut r = Reader::new(body, "data row");
    if r.i16().ok()? < 1 {
        return None;
    }
    let len = usize::try_from(r.i32().ok()?).ok()?;
    let rest = r.rest();
    std::str::from_utf8(rest.get(..len)?).ok()
}

/// Every value of a text-format DataRow (`None` for NULL or a value that is not UTF-8).
pub fn values(body: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    let mut r = Reader::new(body, "data row");
    let Ok(n) = r.i16() else { return out };
    for _ in 0..n {
        let Ok(len) = r.i32() else { break };
        let Ok(len) = usize::try_from(len) else {
            out.push(None);
            continue;
        };
        let rest = r.rest();
        let Some(bytes) = rest.get(..len) else { break };
        out.push(std::str::from_utf8(bytes).ok().map(String::from));
        r = Reader::new(&rest[len..], "data row");
    }
    out
}

/// Parse complete / bind complete / no data / close complete: empty-bodied responses.
pub fn empty(tag: u8) -> Message {
    Message::new(tag, Bytes::new())
}

/// The SQLSTATE of an ErrorResponse body, if present.
pub fn error_code(body: &[u8]) -> Option<String> {
    field(body, b'C')
}

/// A field of an ErrorResponse/NoticeResponse body.
pub fn field(body: &[u8], wanted: u8) -> Option<String> {
    let mut r = Reader::new(body, "error");
    loop {
        let f = r.u8().ok()?;
        if f == 0 {
            return None;
        }
        let v = r.cstr().ok()?;
        if f == wanted {
            return Some(v.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn absurd_lengths_are_refused_without_allocating() {
        let mut input: &[u8] = &[b'Q', 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_message(&mut input).await,
            Err(ProtocolError::BadLength { .. })
        ));
        let mut input: &[u8] = &[b'Q', 0, 0, 0, 2];
        assert!(matches!(
            read_message(&mut input).await,
            Err(ProtocolError::BadLength { .. })
        ));
        let mut input: &[u8] = &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        assert!(read_startup(&mut input).await.is_err());
    }

    #[tokio::test]
    async fn limited_read_refuses_a_long_message_from_its_header() {
        // Only the header is there: a reader that waited for the body would see Closed.
        let mut input: &[u8] = &[b'p', 0, 0, 0x10, 0x05];
        let mut r = FramedReader::new(&mut input);
        assert!(matches!(
            r.next_limited(MAX_AUTH).await,
            Err(ProtocolError::BadLength { len: 4101, .. })
        ));
        let mut input: &[u8] = &[b'p', 0, 0, 0, 6, b'o', b'k'];
        let mut r = FramedReader::new(&mut input);
        assert_eq!(
            r.next_limited(MAX_AUTH).await.unwrap(),
            Message::new(b'p', &b"ok"[..])
        );
    }

    #[tokio::test]
    async fn buffered_takes_only_whole_messages_of_the_asked_kinds() {
        // Two notifications and an error in one read, then half a notice.
        let mut input: &[u8] = &[
            b'A', 0, 0, 0, 5, b'1', b'A', 0, 0, 0, 5, b'2', b'E', 0, 0, 0, 5, b'x', b'N', 0, 0, 0,
            9, b'h',
        ];
        let mut r = FramedReader::new(&mut input);
        assert_eq!(r.next().await.unwrap(), Message::new(b'A', &b"1"[..]));
        assert_eq!(r.buffered(b"ANS"), Some(Message::new(b'A', &b"2"[..])));
        assert_eq!(r.buffered(b"ANS"), None, "an error is not taken");
        assert_eq!(r.next().await.unwrap(), Message::new(b'E', &b"x"[..]));
        assert_eq!(
            r.buffered(b"ANS"),
            None,
            "an incomplete message is not taken"
        );
        assert!(matches!(r.next().await, Err(ProtocolError::Closed)));
    }

    #[tokio::test]
    async fn framed_reader_splits_messages_and_checks_lengths() {
        let mut input: &[u8] = &[
            b'Q', 0, 0, 0, 6, b'h', b'i', b'S', 0, 0, 0, 4, b'Q', 0x7f, 0xff, 0xff, 0xff,
        ];
        let mut r = FramedReader::new(&mut input);
        assert_eq!(r.next().await.unwrap(), Message::new(b'Q', &b"hi"[..]));
        assert_eq!(r.next().await.unwrap(), Message::new(b'S', Bytes::new()));
        assert!(matches!(
            r.next().await,
            Err(ProtocolError::BadLength { .. })
        ));
        let mut short: &[u8] = &[b'Q', 0, 0, 0, 9, b'x'];
        assert!(matches!(
            FramedReader::new(&mut short).next().await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn truncated_message_is_closed() {
        let mut input: &[u8] = &[b'Q', 0, 0, 0, 10, b's'];
        assert!(matches!(
            read_message(&mut input).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[test]
    fn parameter_status_written_in_place_matches_the_message() {
        let mut a = BytesMut::new();
        parameter_status("TimeZone", "UTC").write_to(&mut a);
        let mut b = BytesMut::new();
        put_parameter_status(&mut b, "TimeZone", "UTC");
        assert_eq!(a, b);
    }

    #[test]
    fn startup_params_parse() {
        let body = b"user\0app\0database\0db\0\0";
        assert_eq!(
            startup_params(body).unwrap(),
            vec![
                ("user".into(), "app".into()),
                ("database".into(), "db".into())
            ]
        );
        assert!(startup_params(b"user\0").is_err());
    }

    #[test]
    fn error_fields_round_trip() {
        let m = error_response("ERROR", "22023", "bad token");
        assert_eq!(error_code(&m.body).as_deref(), Some("22023"));
        assert_eq!(field(&m.body, b'M').as_deref(), Some("bad token"));
    }
}
