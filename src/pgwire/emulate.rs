//! Extended-protocol batches that only touch homeport's own settings (`SHOW homeport.route`
//! prepared by a driver, `SET homeport.user` sent through Parse/Bind/Execute) are answered by
//! homeport with the messages a server would send; they never reach a server, so they work
//! before any server is attached and never move a session to another connection.

use bytes::{BufMut, BytesMut};

use super::codec::{self, Message, Reader};
use super::frontend::Frontend;
use super::session::{ClientStatement, Session, SessionError};
use super::settings::{self, Setting};

impl Session {
    /// The setting a batch is about, if every statement it parses or binds is a homeport setting.
    pub(super) fn settings_only(&self, batch: &[Frontend<'_>]) -> Option<Vec<Setting>> {
        let mut found = Vec::new();
        for m in batch {
            let setting = match m {
                Frontend::Parse(p) => settings::parse(&p.sql().ok()?)?,
                Frontend::Bind(b) => {
                    let sql = if b.statement.is_empty() {
                        self.unnamed_sql.as_deref()
                    } else {
                        self.statements.get(b.statement).map(|s| &*s.sql)
                    };
                    match sql {
                        Some(sql) => settings::parse(sql)?,
                        None => continue,
                    }
                }
                _ => continue,
            };
            found.push(setting);
        }
        (!found.is_empty()).then_some(found)
    }

    /// Answers a settings-only batch message by message.
    pub(super) async fn emulate(&mut self, batch: &[Message]) -> Result<(), SessionError> {
        let mut current: Option<Setting> = None;
        let mut failed = false;
        for m in batch {
            if failed && m.tag != b'S' {
                continue;
            }
            match m.tag {
                b'P' => {
                    let mut r = Reader::new(&m.body, "parse");
                    let name = r.cstr()?.to_string();
                    let rest = r.rest();
                    let sql = Reader::new(rest, "parse").text()?;
                    let sql = sql.as_ref();
                    if name.is_empty() {
                        self.unnamed_sql = Some(sql.into());
                        self.unnamed_parse = None;
                    } else {
                        let parse_body = super::session::with_name(&name, rest);
                        let server_name = super::session::server_statement_name(rest);
                        self.statements.insert(
                            name,
                            ClientStatement {
                                sql: sql.into(),
                                server_name,
                                parse_body,
                            },
                        );
                    }
                    current = settings::parse(sql);
                    self.send(codec::empty(b'1'));
                }
                b'B' => {
                    let mut r = Reader::new(&m.body, "bind");
                    r.cstr()?;
                    let name = r.cstr()?;
                    let sql = if name.is_empty() {
                        self.unnamed_sql.clone()
                    } else {
                        self.statements.get(name).map(|s| s.sql.clone())
                    };
                    current = sql.and_then(|s| settings::parse(&s));
                    self.send(codec::empty(b'2'));
                }
                b'D' => {
                    let kind = Reader::new(&m.body, "describe").u8()?;
                    if kind == b'S' {
                        let mut b = BytesMut::new();
                        b.put_i16(0);
                        self.send(Message::new(b't', b.freeze()));
                    }
                    match &current {
                        Some(Setting::Show { name }) => {
                            self.send(codec::text_row_description(&format!("homeport.{name}")))
                        }
                        _ => self.send(codec::empty(b'n')),
                    }
                }
                b'E' => match current.clone() {
                    Some(s) => match self.apply_setting_io(&s).await {
                        Ok(out) => {
                            if let Some((_, value)) = &out.row {
                                self.send(codec::text_data_row(value));
                            }
                            self.send(codec::command_complete(out.tag));
                        }
                        Err(e) => {
                            self.fail(e);
                            failed = true;
                        }
                    },
                    None => self.send(codec::empty(b'I')),
                },
                b'C' => self.send(codec::empty(b'3')),
                b'S' => {
                    failed = false;
                    let status = self.txn_status();
                    self.send(codec::ready_for_query(status));
                }
                _ => {}
            }
        }
        Ok(())
    }
}
