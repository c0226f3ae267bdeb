//! Typed views of the server messages homeport reads for itself (its own login and its own
//! queries), borrowing the received bytes. Messages relayed to clients are not decoded: the relay
//! only needs their tags (`expect.rs`).

use super::codec::{self, Message, ProtocolError, Reader};

/// A server message, decoded as far as homeport needs it.
#[derive(Debug, PartialEq, Eq)]
pub enum ServerMsg<'a> {
    /// `R`: an authentication request (0 = ok, 3 = cleartext, 5 = md5, 10/11/12 = SASL) and the
    /// bytes after its code.
    Authentication { code: i32, data: &'a [u8] },
    /// `S`: a run-time parameter the server reports.
    ParameterStatus { name: &'a str, value: &'a str },
    /// `K`: the process id and secret key for cancel requests.
    BackendKeyData { pid: i32, secret: i32 },
    /// `Z`: the server is idle; the transaction status byte (`I`, `T` or `E`).
    ReadyForQuery(u8),
    /// `E`: an error, its fields read on demand.
    Error(ErrorFields<'a>),
    /// `N`: a notice (homeport's own queries ignore them).
    Notice,
    /// `D`: a row, its values read on demand.
    DataRow(&'a [u8]),
    /// Anything else homeport does not read for itself (RowDescription, CommandComplete, ...).
    Other(u8),
}

impl<'a> ServerMsg<'a> {
    pub fn parse(m: &'a Message) -> Result<ServerMsg<'a>, ProtocolError> {
        let body: &'a [u8] = &m.body;
        Ok(match m.tag {
            b'R' => {
                let mut r = Reader::new(body, "authentication");
                let code = r.i32()?;
                ServerMsg::Authentication {
                    code,
                    data: r.rest(),
                }
            }
            b'S' => {
                let mut r = Reader::new(body, "parameter status");
                ServerMsg::ParameterStatus {
                    name: r.cstr()?,
                    value: r.cstr()?,
                }
            }
            b'K' => {
                let mut r = Reader::new(body, "backend key");
                ServerMsg::BackendKeyData {
                    pid: r.i32()?,
                    secret: r.i32()?,
                }
            }
            b'Z' => ServerMsg::ReadyForQuery(body.first().copied().unwrap_or(b'I')),
            b'E' => ServerMsg::Error(ErrorFields(body)),
            b'N' => ServerMsg::Notice,
            b'D' => ServerMsg::DataRow(body),
            other => ServerMsg::Other(other),
        })
    }
}

/// The fields of an ErrorResponse body.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct ErrorFields<'a>(&'a [u8]);

impl ErrorFields<'_> {
    /// The primary message (`M`), empty if the server sent none.
    pub fn message(&self) -> String {
        codec::field(self.0, b'M').unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};

    fn msg(tag: u8, body: &[u8]) -> Message {
        Message::new(tag, body.to_vec())
    }

    #[test]
    fn the_messages_homeport_reads_for_itself() {
        let auth = msg(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]);
        assert_eq!(
            ServerMsg::parse(&auth).unwrap(),
            ServerMsg::Authentication {
                code: 5,
                data: &[1, 2, 3, 4]
            }
        );
        let status = msg(b'S', b"TimeZone\0UTC\0");
        assert_eq!(
            ServerMsg::parse(&status).unwrap(),
            ServerMsg::ParameterStatus {
                name: "TimeZone",
                value: "UTC"
            }
        );
        let mut key = BytesMut::new();
        key.put_i32(42);
        key.put_i32(-7);
        let key = msg(b'K', &key);
        assert_eq!(
            ServerMsg::parse(&key).unwrap(),
            ServerMsg::BackendKeyData {
                pid: 42,
                secret: -7
            }
        );
        assert_eq!(
            ServerMsg::parse(&msg(b'Z', b"T")).unwrap(),
            ServerMsg::ReadyForQuery(b'T')
        );
        let error = msg(b'E', b"SERROR\0C42P01\0Mno such table\0\0");
        match ServerMsg::parse(&error).unwrap() {
            ServerMsg::Error(e) => assert_eq!(e.message(), "no such table"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            ServerMsg::parse(&msg(b'N', b"")).unwrap(),
            ServerMsg::Notice
        );
        assert_eq!(
            ServerMsg::parse(&msg(b'D', &[0, 0])).unwrap(),
            ServerMsg::DataRow(&[0, 0])
        );
        assert_eq!(
            ServerMsg::parse(&msg(b'C', b"SELECT 1\0")).unwrap(),
            ServerMsg::Other(b'C')
        );
    }

    #[test]
    fn truncated_messages_are_protocol_errors_not_panics() {
        for (tag, body) in [
            (b'R', &b"\0\0"[..]),
            (b'S', b"TimeZone"),
            (b'S', b"TimeZone\0UTC"),
            (b'K', b"\0\0\0\x2a"),
        ] {
            assert!(ServerMsg::parse(&msg(tag, body)).is_err(), "{tag} {body:?}");
        }
    }
}
