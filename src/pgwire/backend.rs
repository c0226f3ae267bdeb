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

use super::codec::{self, FramedReader, Message, ProtocolError};
use super::server_msg::ServerMsg;

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
        ServerConn::over(stream, pg, timeout, host, port).await
    }

    /// The startup exchange over an open stream (TCP, TLS, or a test's scripted server).
    async fn over(
        stream: Box<dyn ServerStream>,
        pg: &tokio_postgres::Config,
        timeout: Duration,
        host: String,
        port: u16,
    ) -> Result<ServerConn, ConnectError> {
        let addr = format!("{host}:{port}");
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
            match ServerMsg::parse(&m)? {
                ServerMsg::Authentication { code, data } => match code {
                    0 => {}
                    3 => {
                        let pw = password.as_deref().ok_or(ConnectError::NoPassword)?;
                        let mut buf = BytesMut::new();
                        frontend::password_message(pw, &mut buf).map_err(ProtocolError::Io)?;
                        self.send_raw(&buf).await?;
                    }
                    5 => {
                        let pw = password.as_deref().ok_or(ConnectError::NoPassword)?;
                        let salt: [u8; 4] = data
                            .get(..4)
                            .and_then(|s| s.try_into().ok())
                            .ok_or(ProtocolError::Malformed("md5"))?;
                        let hash =
                            postgres_protocol::authentication::md5_hash(user.as_bytes(), pw, salt);
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
                        s.update(data)
                            .map_err(|e| ConnectError::Refused(e.to_string()))?;
                        let mut buf = BytesMut::new();
                        frontend::sasl_response(s.message(), &mut buf)
                            .map_err(ProtocolError::Io)?;
                        self.send_raw(&buf).await?;
                    }
                    12 => {
                        let s = scram.as_mut().ok_or(ProtocolError::Malformed("sasl"))?;
                        s.finish(data)
                            .map_err(|e| ConnectError::Refused(e.to_string()))?;
                    }
                    other => {
                        return Err(ConnectError::Refused(format!(
                            "unsupported authentication method {other}"
                        )));
                    }
                },
                ServerMsg::ParameterStatus { name, value } => {
                    self.params.push((name.to_string(), value.to_string()));
                }
                ServerMsg::BackendKeyData { pid, secret } => self.key = (pid, secret),
                ServerMsg::Error(e) => return Err(ConnectError::Refused(e.message())),
                ServerMsg::Notice => {}
                ServerMsg::ReadyForQuery(_) => return Ok(()),
                ServerMsg::DataRow(_) | ServerMsg::Other(_) => {
                    return Err(ProtocolError::Unsupported(format!(
                        "unexpected message '{}' during startup",
                        m.tag as char
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

    /// A message of one of `tags` that the server sent together with the last one, if it is
    /// already here.
    pub fn buffered(&mut self, tags: &[u8]) -> Option<Message> {
        self.reader.buffered(tags)
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
            match ServerMsg::parse(&m)? {
                ServerMsg::DataRow(row) => {
                    if let Ok(rows) = outcome.as_mut() {
                        rows.push(codec::values(row));
                    }
                }
                ServerMsg::Error(_) => outcome = Err(m),
                ServerMsg::ReadyForQuery(status) => return Ok((outcome, status)),
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
            match ServerMsg::parse(&m)? {
                ServerMsg::DataRow(row) if matches!(outcome, Ok(None)) => {
                    outcome = Ok(codec::first_value(row).map(String::from))
                }
                ServerMsg::Error(_) => outcome = Err(m),
                ServerMsg::ReadyForQuery(status) => return Ok((outcome, status)),
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

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    /// A server scripted message by message on the other end of an in-memory stream.
    struct Script(DuplexStream);

    impl Script {
        /// Reads one frontend message (the startup message has no tag: `\0`).
        async fn read(&mut self, tagged: bool) -> (u8, Vec<u8>) {
            let tag = if tagged {
                self.0.read_u8().await.unwrap()
            } else {
                0
            };
            let len = self.0.read_i32().await.unwrap() as usize;
            let mut body = vec![0; len - 4];
            self.0.read_exact(&mut body).await.unwrap();
            (tag, body)
        }

        async fn send(&mut self, tag: u8, body: &[u8]) {
            let mut b = BytesMut::new();
            b.put_u8(tag);
            b.put_i32(body.len() as i32 + 4);
            b.put_slice(body);
            self.0.write_all(&b).await.unwrap();
        }

        async fn ready(&mut self, status: u8) {
            self.send(b'Z', &[status]).await;
        }
    }

    fn config(password: Option<&str>) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.user("app").dbname("app");
        if let Some(p) = password {
            pg.password(p);
        }
        pg
    }

    /// A connection to a scripted server that has run `startup`.
    async fn connected<F, Fut>(
        password: Option<&str>,
        startup: F,
    ) -> (Result<ServerConn, ConnectError>, Script)
    where
        F: FnOnce(Script) -> Fut,
        Fut: Future<Output = Script> + Send + 'static,
    {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(startup(Script(theirs)));
        let pg = config(password);
        let conn = ServerConn::over(
            Box::new(ours),
            &pg,
            Duration::from_secs(5),
            "scripted".into(),
            5432,
        )
        .await;
        (conn, server.await.unwrap())
    }

    #[tokio::test]
    async fn md5_startup_keeps_parameters_and_the_cancel_key() {
        let (conn, _server) = connected(Some("secret"), |mut s| async move {
            let (_, startup) = s.read(false).await;
            let text = String::from_utf8_lossy(&startup).to_string();
            assert!(text.contains("user\0app\0") && text.contains("database\0app\0"));
            s.send(b'R', &[0, 0, 0, 5, 1, 2, 3, 4]).await;
            let (tag, password) = s.read(true).await;
            let user = postgres_protocol::authentication::md5_hash(b"app", b"secret", [1, 2, 3, 4]);
            assert_eq!(
                (tag, &password[..password.len() - 1]),
                (b'p', user.as_bytes())
            );
            s.send(b'R', &[0, 0, 0, 0]).await;
            s.send(b'S', b"server_version\x0015.8\0").await;
            s.send(b'K', &[0, 0, 0, 42, 0, 0, 0, 7]).await;
            s.ready(b'I').await;
            s
        })
        .await;
        let conn = conn.unwrap();
        assert_eq!(conn.params, [("server_version".into(), "15.8".into())]);
        assert_eq!(conn.key, (42, 7));
        assert_eq!((conn.cancel_target.pid, conn.cancel_target.secret), (42, 7));
    }

    #[tokio::test]
    async fn refusals_and_surprises_during_startup_are_errors() {
        let (conn, _s) = connected(None, |mut s| async move {
            s.read(false).await;
            let refusal = codec::error_response("FATAL", "28P01", "password authentication failed");
            s.send(refusal.tag, &refusal.body).await;
            s
        })
        .await;
        assert!(
            matches!(&conn, Err(ConnectError::Refused(m)) if m == "password authentication failed")
        );
        let (conn, _s) = connected(None, |mut s| async move {
            s.read(false).await;
            s.send(b'R', &[0, 0, 0, 3]).await;
            s
        })
        .await;
        assert!(matches!(conn, Err(ConnectError::NoPassword)));
        let (conn, _s) = connected(None, |mut s| async move {
            s.read(false).await;
            s.send(b'D', &[0, 0]).await;
            s
        })
        .await;
        assert!(matches!(conn, Err(ConnectError::Protocol(_))));
    }

    #[tokio::test]
    async fn own_queries_return_a_value_or_the_error_and_the_status() {
        let (conn, mut s) = connected(None, |mut s| async move {
            s.read(false).await;
            s.send(b'R', &[0, 0, 0, 0]).await;
            s.ready(b'I').await;
            s
        })
        .await;
        let mut conn = conn.unwrap();
        let server = tokio::spawn(async move {
            let (tag, sql) = s.read(true).await;
            assert_eq!((tag, sql.as_slice()), (b'Q', b"SELECT 1\0".as_slice()));
            s.send(b'T', &[0, 0]).await;
            s.send(b'D', &[0, 1, 0, 0, 0, 1, b'1']).await;
            s.send(b'D', &[0, 1, 0, 0, 0, 1, b'2']).await;
            s.send(b'C', b"SELECT 2\0").await;
            s.ready(b'T').await;
            s.read(true).await;
            let e = codec::error_response("ERROR", "42601", "syntax error");
            s.send(e.tag, &e.body).await;
            s.ready(b'E').await;
            s.read(true).await;
            s.send(b'D', &[0, 1, 255, 255, 255, 255]).await;
            s.send(b'C', b"SELECT 1\0").await;
            s.ready(b'I').await;
            // An idle server speaks only to say it is going away.
            let bye = codec::error_response("FATAL", "57P01", "terminating connection");
            s.send(bye.tag, &bye.body).await;
            s
        });
        let (value, status) = conn.run_own("SELECT 1").await.unwrap();
        assert_eq!((value.unwrap(), status), (Some("1".to_string()), b'T'));
        let (value, status) = conn.run_own("SELEC").await.unwrap();
        assert_eq!(
            codec::error_code(&value.unwrap_err().body).as_deref(),
            Some("42601")
        );
        assert_eq!(status, b'E');
        assert_eq!(conn.query_value("SELECT NULL").await.unwrap(), None);
        let _server = server.await.unwrap();
        assert!(
            !conn.still_idle(),
            "a message after ReadyForQuery: not reusable"
        );
    }
}
