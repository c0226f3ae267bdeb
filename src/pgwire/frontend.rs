//! The extended-protocol messages a client sends, decoded once into types
//! (<https://www.postgresql.org/docs/15/protocol-message-formats.html>).
//!
//! A batch (the messages up to a Sync or Flush) is decoded once when it runs: the settings check,
//! the plan (classification, statement bookkeeping) and the rewrite for the server all match on
//! these types instead of reading tag bytes and fields again. Decoding copies nothing: names,
//! query texts and parameter bytes are slices of the messages the framed reader cut, which are
//! themselves slices of its read buffer.

use std::borrow::Cow;

use bytes::{BufMut, BytesMut};

use super::codec::{Message, ProtocolError, Reader};

/// Parse: a statement to prepare under `name` (empty: the unnamed statement).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parse<'a> {
    pub name: &'a str,
    /// Everything after the name: the query text, its NUL and the parameter types. This is
    /// what identifies the statement on a server connection (see `server_statement_name`).
    pub after_name: &'a [u8],
}

impl<'a> Parse<'a> {
    /// The query text in the client's encoding (not necessarily UTF-8; see [`Reader::text`]).
    pub fn sql(&self) -> Result<Cow<'a, str>, ProtocolError> {
        Reader::new(self.after_name, "parse").text()
    }

    pub fn write_to(&self, out: &mut BytesMut) {
        put_header(out, b'P', self.name.len() + 1 + self.after_name.len());
        put_cstr(out, self.name);
        out.put_slice(self.after_name);
    }
}

/// Bind: a portal from a prepared statement, with parameter formats, values and result formats
/// (`params`, passed on as they came).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    pub portal: &'a str,
    pub statement: &'a str,
    pub params: &'a [u8],
}

impl Bind<'_> {
    pub fn write_to(&self, out: &mut BytesMut) {
        self.write_for(self.statement, out);
    }

    /// The same Bind naming the statement `statement` (its name on a server connection).
    pub fn write_for(&self, statement: &str, out: &mut BytesMut) {
        let len = self.portal.len() + 1 + statement.len() + 1 + self.params.len();
        put_header(out, b'B', len);
        put_cstr(out, self.portal);
        put_cstr(out, statement);
        out.put_slice(self.params);
    }
}

/// What a Describe or Close is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Statement,
    Portal,
}

/// Describe or Close of a statement or portal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub kind: Kind,
    pub name: &'a str,
}

impl Target<'_> {
    /// A named prepared statement (not the unnamed one, not a portal).
    pub fn named_statement(&self) -> Option<&str> {
        (self.kind == Kind::Statement && !self.name.is_empty()).then_some(self.name)
    }

    fn write_to(&self, tag: u8, name: &str, out: &mut BytesMut) {
        put_header(out, tag, 1 + name.len() + 1);
        out.put_u8(match self.kind {
            Kind::Statement => b'S',
            Kind::Portal => b'P',
        });
        put_cstr(out, name);
    }
}

/// Execute a portal, returning at most `max_rows` rows (0: all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Execute<'a> {
    pub portal: &'a str,
    pub max_rows: i32,
}

/// One message of an extended-protocol batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frontend<'a> {
    Parse(Parse<'a>),
    Bind(Bind<'a>),
    Describe(Target<'a>),
    Close(Target<'a>),
    Execute(Execute<'a>),
    Sync,
    Flush,
}

impl<'a> Frontend<'a> {
    /// Decodes a message of a batch; a malformed one (or another kind) is an error.
    pub fn decode(m: &'a Message) -> Result<Frontend<'a>, ProtocolError> {
        let body: &'a [u8] = &m.body;
        Ok(match m.tag {
            b'P' => {
                let mut r = Reader::new(body, "parse");
                let name = r.cstr()?;
                let after_name = r.rest();
                // The query must end in a NUL; what it says is read when it is needed.
                Reader::new(after_name, "parse").text()?;
                Frontend::Parse(Parse { name, after_name })
            }
            b'B' => {
                let mut r = Reader::new(body, "bind");
                let portal = r.cstr()?;
                let statement = r.cstr()?;
                Frontend::Bind(Bind {
                    portal,
                    statement,
                    params: r.rest(),
                })
            }
            b'D' | b'C' => {
                let mut r = Reader::new(body, if m.tag == b'D' { "describe" } else { "close" });
                let kind = match r.u8()? {
                    b'S' => Kind::Statement,
                    b'P' => Kind::Portal,
                    _ => return Err(ProtocolError::Malformed("describe or close")),
                };
                let target = Target {
                    kind,
                    name: r.cstr()?,
                };
                if m.tag == b'D' {
                    Frontend::Describe(target)
                } else {
                    Frontend::Close(target)
                }
            }
            b'E' => {
                let mut r = Reader::new(body, "execute");
                Frontend::Execute(Execute {
                    portal: r.cstr()?,
                    max_rows: r.i32()?,
                })
            }
            b'S' => Frontend::Sync,
            b'H' => Frontend::Flush,
            _ => return Err(ProtocolError::Malformed("extended-protocol")),
        })
    }

    /// Decodes every message of a batch.
    pub fn decode_all(batch: &'a [Message]) -> Result<Vec<Frontend<'a>>, ProtocolError> {
        batch.iter().map(Frontend::decode).collect()
    }

    /// Appends the message in wire form.
    pub fn write_to(&self, out: &mut BytesMut) {
        match self {
            Frontend::Parse(p) => p.write_to(out),
            Frontend::Bind(b) => b.write_to(out),
            Frontend::Describe(t) => t.write_to(b'D', t.name, out),
            Frontend::Close(t) => t.write_to(b'C', t.name, out),
            Frontend::Execute(e) => {
                put_header(out, b'E', e.portal.len() + 1 + 4);
                put_cstr(out, e.portal);
                out.put_i32(e.max_rows);
            }
            Frontend::Sync => put_header(out, b'S', 0),
            Frontend::Flush => put_header(out, b'H', 0),
        }
    }

    /// The statement a Parse, Bind or Describe names (empty for the unnamed statement).
    pub fn statement(&self) -> Option<&'a str> {
        match self {
            Frontend::Parse(p) => Some(p.name),
            Frontend::Bind(b) => Some(b.statement),
            Frontend::Describe(t) if t.kind == Kind::Statement => Some(t.name),
            _ => None,
        }
    }
}

/// Describe of a statement under another name (its name on a server connection).
pub fn write_describe_statement(name: &str, out: &mut BytesMut) {
    Target {
        kind: Kind::Statement,
        name,
    }
    .write_to(b'D', name, out);
}

/// Close of a statement by name.
pub fn write_close_statement(name: &str, out: &mut BytesMut) {
    Target {
        kind: Kind::Statement,
        name,
    }
    .write_to(b'C', name, out);
}

/// Tag and length of a message whose body is `body_len` bytes.
fn put_header(out: &mut BytesMut, tag: u8, body_len: usize) {
    out.reserve(5 + body_len);
    out.put_u8(tag);
    out.put_i32((body_len + 4) as i32);
}

fn put_cstr(out: &mut BytesMut, s: &str) {
    out.put_slice(s.as_bytes());
    out.put_u8(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cuts wire bytes into messages the way the framed reader does.
    fn messages(mut wire: &[u8]) -> Vec<Message> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            let len = i32::from_be_bytes([wire[1], wire[2], wire[3], wire[4]]) as usize;
            out.push(Message::new(wire[0], wire[5..1 + len].to_vec()));
            wire = &wire[1 + len..];
        }
        out
    }

    fn round_trip(m: Frontend<'_>) {
        let mut wire = BytesMut::new();
        m.write_to(&mut wire);
        let cut = messages(&wire);
        assert_eq!(cut.len(), 1);
        assert_eq!(Frontend::decode(&cut[0]).unwrap(), m);
        let mut again = BytesMut::new();
        Frontend::decode(&cut[0]).unwrap().write_to(&mut again);
        assert_eq!(again, wire);
    }

    #[test]
    fn every_batch_message_round_trips() {
        let types = b"select $1::int\0\0\x01\0\0\0\x17";
        round_trip(Frontend::Parse(Parse {
            name: "s1",
            after_name: types,
        }));
        round_trip(Frontend::Parse(Parse {
            name: "",
            after_name: b"select 1\0\0\0",
        }));
        round_trip(Frontend::Bind(Bind {
            portal: "",
            statement: "s1",
            params: b"\0\0\0\x01\0\0\0\x0242\0\0",
        }));
        for kind in [Kind::Statement, Kind::Portal] {
            round_trip(Frontend::Describe(Target { kind, name: "x" }));
            round_trip(Frontend::Close(Target { kind, name: "" }));
        }
        round_trip(Frontend::Execute(Execute {
            portal: "p",
            max_rows: 100,
        }));
        round_trip(Frontend::Sync);
        round_trip(Frontend::Flush);
    }

    #[test]
    fn decoding_reads_what_pgbench_sends() {
        // pgbench -M prepared: Bind of P0_1 with one text parameter, Execute, Sync.
        let mut wire = BytesMut::new();
        wire.put_slice(b"B\0\0\0\x19\0P0_1\0\0\0\0\x01\0\0\0\x0512345\0\0");
        wire.put_slice(b"E\0\0\0\x09\0\0\0\0\0S\0\0\0\x04");
        let cut = messages(&wire);
        let decoded = Frontend::decode_all(&cut).unwrap();
        assert_eq!(
            decoded[0],
            Frontend::Bind(Bind {
                portal: "",
                statement: "P0_1",
                params: b"\0\0\0\x01\0\0\0\x0512345\0\0",
            })
        );
        assert_eq!(decoded[0].statement(), Some("P0_1"));
        assert_eq!(
            decoded[1],
            Frontend::Execute(Execute {
                portal: "",
                max_rows: 0
            })
        );
        assert_eq!(decoded[2], Frontend::Sync);
    }

    #[test]
    fn rewritten_names_keep_the_rest_of_the_message() {
        let bind = Bind {
            portal: "p",
            statement: "s1",
            params: b"\0\0\0\0\0\0",
        };
        let mut out = BytesMut::new();
        bind.write_for("hp_0123", &mut out);
        let cut = messages(&out);
        assert_eq!(
            Frontend::decode(&cut[0]).unwrap(),
            Frontend::Bind(Bind {
                statement: "hp_0123",
                ..bind
            })
        );
        let mut d = BytesMut::new();
        write_describe_statement("hp_0123", &mut d);
        assert_eq!(&d[..], b"D\0\0\0\x0dShp_0123\0");
        let mut c = BytesMut::new();
        write_close_statement("hp_0123", &mut c);
        assert_eq!(&c[..], b"C\0\0\0\x0dShp_0123\0");
    }

    #[test]
    fn malformed_messages_are_errors() {
        for (tag, body) in [
            (b'B', &b"portal-without-nul"[..]),
            (b'B', b"\0"),
            (b'P', b"name\0query-without-nul"),
            (b'D', b"Xname\0"),
            (b'C', b""),
            (b'E', b"\0\0\0"),
            (b'Q', b"select 1\0"),
        ] {
            let m = Message::new(tag, body.to_vec());
            assert!(Frontend::decode(&m).is_err(), "{} {:?}", tag as char, body);
        }
    }
}
