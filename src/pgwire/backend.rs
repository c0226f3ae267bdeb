//! Server connections for the wire front end: homeport connects to PostgreSQL itself, speaks the
//! startup and authentication exchange with its own credentials (trust, cleartext, md5 or
//! SCRAM-SHA-256 through `postgres-protocol`), and keeps the server's parameter statuses, backend
//! key and the statements it has prepared on that connection.

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_postgres::config::Host;

use crate::db::tls::{ServerStream, ServerTls};

use super::codec::{self, FramedReader, Message, ProtocolError, Reader};

/// One authenticated server connection, idle at ReadyForQuery when in a pool.
pub struct ServerConn {
    reader: FramedReader<ReadHalf<Box<dyn ServerStream>>>,
    writer: WriteHalf<Box<dyn ServerStream>>,
    pub params: Vec<(String, String)>,
    /// Process id and secret key, for cancel requests.
    pub key: (i32, i32),
    /// Server-side names of statements prepared on this connection.
    pub prepared: super::prepared::PreparedSet,
    /// When the connection was made (for `postgres.max_lifetime`).
    pub created: Instant,
    /// When the connection last went back to its pool (for `postgres.idle_timeout`).
    pub idle_since: Instant,
    /// The session-level settings homeport left on this connection (a client's, and the
    /// identity setting).
    pub settings: super::server_settings::Settings,
    pub host: String,
    pub port: u16,
    /// Where and how to cancel a statement running on this connection.
    pub cancel_target: std::sync::Arc<super::cancel::CancelTarget>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    #[error("server refused the connection: {0}")]
    Refused(String),
    #[error("server asks for a password and none is configured")]
    NoPassword,
}

impl ServerConn {
    pub async fn connect(
        pg: &tokio_postgres::Config,
        timeout: Duration,
        tls: &ServerTls,
    ) -> Result<ServerConn, ConnectError> {
        let host = match pg.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            _ => "localhost".into(),
        };
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let addr = format!("{host}:{port}");
        let stream = tokio::time::timeout(timeout, TcpStream::connect(&addr))
            .await
            .map_err(|_| {
                ConnectError::Connect(addr.clone(), format!("timed out after {timeout:?}"))
            })?
            .map_err(|e| ConnectError::Connect(addr.clone(), e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let stream = tokio::time::timeout(timeout, secure(stream, &host, tls))
            .await
            .map_err(|_| ConnectError::Connect(addr.clone(), "TLS handshake timed out".into()))?
            .map_err(|e| ConnectError::Connect(addr.clone(), e))?;
        let (r, w) = tokio::io::split(stream);
        let mut conn = ServerConn {
            reader: FramedReader::new(r),
            writer: w,
            params: Vec::new(),
            key: (0, 0),
            prepared: Default::default(),
            created: Instant::now(),
            idle_since: Instant::now(),
            settings: Default::default(),
            cancel_target: Default::default(),
            host,
            port,
        };
        tokio::time::timeout(timeout, conn.startup(pg))
            .await
            .map_err(|_| ConnectError::Connect(addr, "startup timed out".into()))??;
        conn.cancel_target = std::sync::Arc::new(super::cancel::CancelTarget {
            host: conn.host.clone(),
            port: conn.port,
            pid: conn.key.0,
            secret: conn.key.1,
        });
        Ok(conn)
    }

    async fn startup(&mut self, pg: &tokio_postgres::Config) -> Result<(), ConnectError> {
        let user = pg.get_user().unwrap_or("postgres").to_string();
        let mut params = vec![("user", user.as_str()), ("client_encoding", "UTF8")];
        if let Some(db) = pg.get_dbname() {
            params.push(("database", db));
        }
        // A wire session sees the server's defaults plus its own settings (which follow it
        // from connection to connection), as it would connected to PostgreSQL itself: homeport's
        // own application_name and statement_timeout (for its HTTP and probe connections) are
        // not sent; other options from the endpoint's URL are.
        if let Some(o) = pg
            .get_options()
            .filter(|o| !o.is_empty() && !o.starts_with("-c statement_timeout="))
        {
            params.push(("options", o));
        }
        let mut buf = BytesMut::new();
        frontend::startup_message(params.iter().copied(), &mut buf).map_err(ProtocolError::Io)?;
        self.send_raw(&buf).await?;
        let password = pg.get_password().map(|p| p.to_vec());
        let mut scram: Option<ScramSha256> = None;
        loop {
            let m = self.recv().await?;
            match m.tag {
                b'R' => {
                    let mut r = Reader::new(&m.body, "authentication");
                    match r.i32()? {
                        0 => {}
                        3 => {
                            let pw = password.as_deref().ok_or(ConnectError::NoPassword)?;
                            let mut buf = BytesMut::new();
                            frontend::password_message(pw, &mut buf).map_err(ProtocolError::Io)?;
                            self.send_raw(&buf).await?;
                        }
                        5 => {
                            let pw = password.as_deref().ok_or(ConnectError::NoPassword)?;
                            let salt: [u8; 4] = r
                                .rest()
                                .get(..4)
                                .and_then(|s| s.try_into().ok())
                                .ok_or(ProtocolError::Malformed("md5"))?;
                            let hash = postgres_protocol::authentication::md5_hash(
                                user.as_bytes(),
                                pw,
                                salt,
                            );
                            let mut buf = BytesMut::new();
                            frontend::password_message(hash.as_bytes(), &mut buf)
                                .map_err(ProtocolError::Io)?;
                            self.send_raw(&buf).await?;
                        }
                        10 => {
                            let pw = password.as_deref().ok_or(ConnectError::NoPassword)?;
                            let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                            let mut buf = BytesMut::new();
                            frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut buf)
                                .map_err(ProtocolError::Io)?;
                            self.send_raw(&buf).await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or(ProtocolError::Malformed("sasl"))?;
                            s.update(r.rest())
                                .map_err(|e| ConnectError::Refused(e.to_string()))?;
                            let mut buf = BytesMut::new();
                            frontend::sasl_response(s.message(), &mut buf)
                                .map_err(ProtocolError::Io)?;
                            self.send_raw(&buf).await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or(ProtocolError::Malformed("sasl"))?;
                            s.finish(r.rest())
                                .map_err(|e| ConnectError::Refused(e.to_string()))?;
                        }
                        other => {
                            return Err(ConnectError::Refused(format!(
                                "unsupported authentication method {other}"
                            )));
                        }
                    }
                }
                b'S' => {
                    let mut r = Reader::new(&m.body, "parameter status");
                    let (k, v) = (r.cstr()?.to_string(), r.cstr()?.to_string());
                    self.params.push((k, v));
                }
                b'K' => {
                    let mut r = Reader::new(&m.body, "backend key");
                    self.key = (r.i32()?, r.i32()?);
                }
                b'E' => {
                    let msg = super::codec::field(&m.body, b'M').unwrap_or_default();
                    return Err(ConnectError::Refused(msg));
                }
                b'N' => {}
                b'Z' => return Ok(()),
                other => {
                    return Err(ProtocolError::Unsupported(format!(
                        "unexpected message '{}' during startup",
                        other as char
                    ))
                    .into());
                }
            }
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.writer.write_all(bytes).await?;
        Ok(())
    }

    pub async fn recv(&mut self) -> Result<Message, ProtocolError> {
        self.reader.next().await
    }

    /// Whether an idle connection is still usable: the server has sent nothing since its last
    /// ReadyForQuery (an idle server speaks only to say it is going away) and the socket is open.
    /// Polls the socket once without waiting.
    pub fn still_idle(&mut self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let next = std::pin::pin!(self.reader.next());
        next.poll(&mut cx).is_pending()
    }

    /// homeport's own one-value query on an idle connection: the first column of the first row,
    /// or `None` if the statement failed or returned no value. The connection is idle again after.
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, ProtocolError> {
        let (outcome, _) = self.run_own(sql).await?;
        Ok(outcome.ok().flatten())
    }

    /// Runs homeport's own simple query: every row's values (text), or the server's
    /// ErrorResponse, and the transaction status the server reported after it.
    pub async fn run_own_rows(
        &mut self,
        sql: &str,
    ) -> Result<(Result<Vec<Vec<Option<String>>>, Message>, u8), ProtocolError> {
        let mut buf = BytesMut::new();
        codec::query(sql).write_to(&mut buf);
        self.send_raw(&buf).await?;
        let mut outcome = Ok(Vec::new());
        loop {
            let m = self.recv().await?;
            match m.tag {
                b'D' => {
                    if let Ok(rows) = outcome.as_mut() {
                        rows.push(codec::values(&m.body));
                    }
                }
                b'E' => outcome = Err(m),
                b'Z' => return Ok((outcome, m.body.first().copied().unwrap_or(b'I'))),
                _ => {}
            }
        }
    }

    /// Runs homeport's own simple query: its first value or the server's ErrorResponse, and
    /// the transaction status the server reported after it.
    pub async fn run_own(
        &mut self,
        sql: &str,
    ) -> Result<(Result<Option<String>, Message>, u8), ProtocolError> {
        let mut buf = BytesMut::new();
        codec::query(sql).write_to(&mut buf);
        self.send_raw(&buf).await?;
        let mut outcome = Ok(None);
        loop {
            let m = self.recv().await?;
            match m.tag {
                b'D' if matches!(outcome, Ok(None)) => {
                    outcome = Ok(codec::first_value(&m.body).map(String::from))
                }
                b'E' => outcome = Err(m),
                b'Z' => return Ok((outcome, m.body.first().copied().unwrap_or(b'I'))),
                _ => {}
            }
        }
    }
}

/// With TLS configured: SSLRequest, and the handshake if the server agrees (a server that does
/// not is refused: verify-full never falls back to plain text). Without: the TCP stream as is.
async fn secure(
    mut tcp: TcpStream,
    host: &str,
    tls: &ServerTls,
) -> Result<Box<dyn ServerStream>, String> {
    let ServerTls::VerifyFull(config) = tls else {
        return Ok(Box::new(tcp));
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await.map_err(|e| e.to_string())?;
    match tcp.read_u8().await.map_err(|e| e.to_string())? {
        b'S' => crate::db::tls::handshake(config, host, tcp)
            .await
            .map_err(|e| format!("TLS: {e}")),
        _ => Err("the server does not accept TLS (sslmode verify-full)".into()),
    }
}
