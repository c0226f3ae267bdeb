//! The PostgreSQL wire-protocol front end: any PostgreSQL client talks to homeport as if it were
//! the database. Module map: `codec` (message framing), `backend` (server connections and their
//! authentication), `prepared` (the bounded set of statements prepared on a server connection),
//! `pool` (per-endpoint pools lent per transaction), `settings` (`SET/SHOW homeport.*`),
//! `server_settings` (a client's session settings, replayed on whichever server it runs on),
//! `session` (client state machine, routing per transaction), `attached` (the server a session
//! holds, its transaction status and pin) and `relay` (moving messages between client and
//! server); `reroute` (reads a replica refused, run again on a primary); `startup` (which roles
//! and databases a client may name, what it is told at startup); `scram` (SCRAM-SHA-256, pure)
//! and `sasl` (its exchange over the wire) authenticate clients.

mod attached;
mod backend;
pub mod cancel;
pub mod codec;
mod consistency;
mod emulate;
mod error;
mod expect;
pub mod frontend;
mod idempotency;
mod optimistic;
mod pool;
mod prepared;
mod relay;
mod reroute;
mod sasl;
pub mod scram;
mod server_msg;
mod server_settings;
mod session;
pub mod settings;
mod startup;
pub mod tls;
mod txn_pooler;

use error::{ClientError, SqlState};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::app::App;
use crate::types::UserId;
pub use cancel::CancelRegistry;
use codec::{Message, ProtocolError};
pub use pool::{Limits as PoolLimits, WirePools};

/// The client connection's halves, plain TCP or TLS.
pub type ClientRead = Box<dyn tokio::io::AsyncRead + Unpin + Send>;
pub type ClientWrite = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// How clients authenticate, with SCRAM verifiers derived once at startup.
pub enum ClientAuth {
    Trust,
    Scram(scram::Credentials),
}

impl ClientAuth {
    /// Fails only when the OS cannot give the random server secret SCRAM salts derive from.
    pub fn from_config(
        auth: &crate::config::PgAuth,
    ) -> Result<ClientAuth, crate::random::RandomError> {
        Ok(match auth {
            crate::config::PgAuth::Trust => ClientAuth::Trust,
            crate::config::PgAuth::ScramSha256(users) => {
                ClientAuth::Scram(scram::Credentials::new(users)?)
            }
        })
    }
}

/// Accepts wire connections until `shutdown`; past `max_client_conn` sessions a new client gets
/// a FATAL "too many connections" and is closed, and existing sessions are untouched.
pub async fn serve(
    current: crate::reload::Current,
    auth: Arc<ClientAuth>,
    tls: Option<Arc<tls::TlsSettings>>,
    listener: TcpListener,
    max_clients: usize,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(max_clients));
    while let Some(stream) = crate::net::accept(&listener, &mut shutdown).await {
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            let limit = current
                .load()
                .app
                .config
                .pg
                .as_ref()
                .map_or(crate::config::DEFAULT_LOGIN_TIMEOUT, |pg| pg.login_timeout);
            tokio::spawn(tokio::time::timeout(limit, refuse(stream)));
            continue;
        };
        let (current, auth, tls) = (current.clone(), auth.clone(), tls.clone());
        let stop = shutdown.clone();
        tokio::spawn(async move {
            if let Err(e) = session(current, &auth, tls.as_deref(), stream, stop).await {
                tracing::debug!(error = %e, "wire session ended with an error");
            }
            drop(permit);
        });
    }
    // Draining: no new clients; sessions end at their next transaction boundary. Returns when
    // the last one ended (the caller bounds this by the grace period).
    drop(listener);
    let _ = slots.acquire_many(max_clients as u32).await;
}

async fn refuse(mut stream: TcpStream) {
    let mut buf = bytes::BytesMut::new();
    if codec::read_startup(&mut stream).await.is_ok() {
        ClientError::new(
            SqlState::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already (homeport max_client_conn)",
        )
        .fatal()
        .write_to(&mut buf);
        let _ = stream.write_all(&buf).await;
    }
}

/// What a successful login hands to the session.
struct Login {
    reader: codec::FramedReader<ClientRead>,
    writer: ClientWrite,
    user: Option<UserId>,
    registration: cancel::Registration,
    settings: server_settings::Settings,
    optimistic: Option<bool>,
}

async fn session(
    current: crate::reload::Current,
    auth: &ClientAuth,
    tls: Option<&tls::TlsSettings>,
    stream: TcpStream,
    shutdown: watch::Receiver<bool>,
) -> Result<(), session::SessionError> {
    let generation = current.load_full();
    let Some(pools) = generation.wire_pools.as_deref() else {
        return Ok(());
    };
    // A client that does not finish logging in within the limit loses its slot (slowloris).
    let limit = generation
        .app
        .config
        .pg
        .as_ref()
        .map_or(crate::config::DEFAULT_LOGIN_TIMEOUT, |pg| pg.login_timeout);
    // Boxed, so the session's task does not keep room for the login's state after it.
    let login = Box::pin(login(&generation.app, pools, auth, tls, stream));
    let login = match tokio::time::timeout(limit, login).await {
        Ok(login) => login?,
        Err(_) => {
            tracing::debug!(?limit, "wire client did not log in in time");
            return Ok(());
        }
    };
    let Some(l) = login else {
        return Ok(());
    };
    session::Session::new(
        generation.clone(),
        current,
        l.reader,
        l.writer,
        l.user,
        l.registration,
        l.settings,
    )
    .with_optimistic(l.optimistic)
    .run(shutdown)
    .await
}

/// Startup, TLS, authentication and the server parameters; `None` when the client was answered
/// and the connection ends (a cancel request, a refusal).
async fn login(
    app: &App,
    pools: &WirePools,
    auth: &ClientAuth,
    tls: Option<&tls::TlsSettings>,
    stream: TcpStream,
) -> Result<Option<Login>, session::SessionError> {
    // Startup packets are read exactly (no read-ahead): after an SSLRequest the next bytes are
    // the client's TLS handshake.
    let mut stream = stream;
    let first = loop {
        let (code, body) = match codec::read_startup(&mut stream).await {
            Ok(packet) => packet,
            Err(e) => return Err(refuse_startup(&mut stream, e).await),
        };
        match code {
            codec::SSL_REQUEST if tls.is_some() => break None,
            // No TLS configured (or GSS encryption asked): say so; the client goes on in plain
            // text or gives up if it requires encryption.
            codec::SSL_REQUEST | codec::GSSENC_REQUEST => {
                stream.write_all(b"N").await.map_err(ProtocolError::from)?
            }
            _ => break Some((code, body)),
        }
    };
    let (r, mut w, first): (ClientRead, ClientWrite, _) = match (first, tls) {
        (Some(first), _) => {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w), Some(first))
        }
        (None, Some(tls)) => {
            stream.write_all(b"S").await.map_err(ProtocolError::from)?;
            let encrypted = tls
                .acceptor
                .accept(stream)
                .await
                .map_err(ProtocolError::from)?;
            let (r, w) = tokio::io::split(encrypted);
            (Box::new(r), Box::new(w), None)
        }
        (None, None) => unreachable!("an SSLRequest without TLS is answered in the loop"),
    };
    let encrypted = first.is_none();
    let mut r = codec::FramedReader::with_chunk(r, codec::CLIENT_CHUNK);
    let (code, body) = match first {
        Some(first) => first,
        None => match r.startup().await {
            Ok(packet) => packet,
            Err(e) => return Err(refuse_startup(&mut w, e).await),
        },
    };
    if tls.is_some_and(|t| t.required) && !encrypted && code == codec::PROTOCOL_3 {
        let mut buf = bytes::BytesMut::new();
        ClientError::no_user(
            "homeport requires TLS on this listener (connect with sslmode=require)",
        )
        .fatal()
        .write_to(&mut buf);
        let _ = w.write_all(&buf).await;
        return Ok(None);
    }
    let params = match code {
        codec::CANCEL_REQUEST => {
            let mut r = codec::Reader::new(&body, "cancel request");
            if let (Ok(pid), Ok(secret)) = (r.i32(), r.i32())
                && let Some(target) = pools.cancel.target(pid, secret)
            {
                let _ = cancel::send_cancel(&target).await;
            }
            return Ok(None);
        }
        codec::PROTOCOL_3 => codec::startup_params(&body)?,
        other => {
            let mut buf = bytes::BytesMut::new();
            let m = format!(
                "unsupported frontend protocol {}.{}",
                other >> 16,
                other & 0xffff
            );
            ClientError::not_supported(&m).fatal().write_to(&mut buf);
            let _ = w.write_all(&buf).await;
            return Err(ProtocolError::Unsupported(m).into());
        }
    };
    let mut user = None;
    for (k, v) in &params {
        let named = match k.as_str() {
            "options" => option_user(v),
            // Drivers pass settings as startup parameters too (asyncpg's server_settings).
            "homeport.user" => Some(v.clone()),
            _ => None,
        };
        if let Some(u) = named {
            match UserId::parse(&u) {
                Ok(u) => user = Some(u),
                Err(m) => {
                    let mut buf = bytes::BytesMut::new();
                    ClientError::invalid_value(format!("invalid homeport.user: {m}"))
                        .fatal()
                        .write_to(&mut buf);
                    let _ = w.write_all(&buf).await;
                    return Ok(None);
                }
            }
        }
    }
    if let ClientAuth::Scram(credentials) = auth {
        let login = params
            .iter()
            .find(|(k, _)| k == "user")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        if let Err(e) = sasl::authenticate(&mut r, &mut w, credentials, login).await {
            let e = match e {
                sasl::AuthFailure::Protocol(m) => ClientError::protocol(m),
                sasl::AuthFailure::Failed(m) => ClientError::new(
                    SqlState::INVALID_PASSWORD,
                    format!("password authentication failed for user \"{login}\" ({m})"),
                ),
            };
            let mut buf = bytes::BytesMut::new();
            e.fatal().write_to(&mut buf);
            let _ = w.write_all(&buf).await;
            return Ok(None);
        }
    }
    if let Some(pg) = app.config.pg.as_ref() {
        let trust = matches!(auth, ClientAuth::Trust);
        let checked = startup::check_role(&params, &pg.roles, trust)
            .and_then(|()| startup::check_database(&params, &pg.databases));
        if let Err(refusal) = checked {
            let mut buf = bytes::BytesMut::new();
            refusal.fatal().write_to(&mut buf);
            let _ = w.write_all(&buf).await;
            return Ok(None);
        }
    }
    let mut buf = bytes::BytesMut::new();
    codec::auth_ok().write_to(&mut buf);
    let endpoint = startup_endpoint(app);
    let identity = app.config.postgres.identity_setting.as_deref();
    let settings = match pools.startup_params(endpoint).await {
        Ok(server_params) => {
            // The client's own startup settings win over what the first server reported.
            let settings = server_settings::from_startup(&params, identity, &server_params);
            for (k, v) in server_params.iter() {
                // Settings are keyed in lowercase; most logins set none or one of these.
                let asked = settings
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v);
                let v = asked.unwrap_or(v);
                codec::put_parameter_status(&mut buf, k, startup::reported(k, v));
            }
            settings
        }
        Err(e) => {
            ClientError::unreachable(format!("homeport cannot reach any database: {e}"))
                .fatal()
                .write_to(&mut buf);
            let _ = w.write_all(&buf).await;
            return Ok(None);
        }
    };
    let registration = match pools.cancel.register() {
        Ok(registration) => registration,
        Err(e) => {
            ClientError::new(SqlState::SYSTEM_ERROR, e.to_string())
                .fatal()
                .write_to(&mut buf);
            let _ = w.write_all(&buf).await;
            return Ok(None);
        }
    };
    codec::backend_key_data(registration.pid, registration.secret).write_to(&mut buf);
    Message::new(b'Z', vec![b'I']).write_to(&mut buf);
    w.write_all(&buf).await.map_err(ProtocolError::from)?;
    Ok(Some(Login {
        reader: r,
        writer: w,
        user,
        registration,
        settings,
        optimistic: startup_optimistic(&params),
    }))
}

/// The first four bytes of a Terminate message ('X', 0, 0, 0) read as a startup packet length.
const TERMINATE_AS_LENGTH: i64 = 0x5800_0000;

/// A startup packet that could not be read: the client is told why (a protocol violation gets
/// FATAL 08P01, as PostgreSQL answers an invalid startup packet length) and the connection ends.
async fn refuse_startup<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    e: ProtocolError,
) -> session::SessionError {
    let m = match &e {
        // A client that gives up before it started sends Terminate ('X', length 4) where the
        // startup packet belongs (node-postgres's connect() then end()); PostgreSQL closes
        // without a word, and so does homeport.
        ProtocolError::BadLength { len, .. } if *len == TERMINATE_AS_LENGTH => None,
        ProtocolError::BadLength { len, .. } => Some(format!(
            "invalid length of startup packet: {len} bytes (at most {})",
            codec::MAX_STARTUP
        )),
        ProtocolError::Malformed(_) => Some(format!("invalid startup packet: {e}")),
        _ => None,
    };
    if let Some(m) = m {
        let mut buf = bytes::BytesMut::new();
        ClientError::protocol(m).fatal().write_to(&mut buf);
        let _ = w.write_all(&buf).await;
    }
    e.into()
}

/// `homeport.user` from a startup `options` string: `-c homeport.user=u1` or `--homeport.user=u1`.
pub fn option_user(options: &str) -> Option<String> {
    option_value(options, "homeport.user")
}

/// The value of `-c name=value` (or `--name=value`) in a startup `options` string.
pub fn option_value(options: &str, name: &str) -> Option<String> {
    let mut words = options.split_whitespace();
    while let Some(w) = words.next() {
        let setting = if w == "-c" {
            words.next()?
        } else if let Some(s) = w.strip_prefix("-c") {
            s
        } else {
            w.strip_prefix("--").unwrap_or("")
        };
        if let Some(v) = setting
            .strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
        {
            return Some(v.to_string());
        }
    }
    None
}

/// `homeport.optimistic_transactions` given at startup (a parameter or an `-c` option).
fn startup_optimistic(params: &[(String, String)]) -> Option<bool> {
    params.iter().find_map(|(k, v)| {
        let value = match k.as_str() {
            "options" => option_value(v, "homeport.optimistic_transactions")?,
            "homeport.optimistic_transactions" => v.clone(),
            _ => return None,
        };
        settings::parse_on_off(&value).ok()
    })
}

/// A healthy endpoint to learn server parameters from: local first.
fn startup_endpoint(app: &App) -> usize {
    let snapshot = app.topology.snapshot();
    let up = |e: &&crate::topology::EndpointView| e.is_up();
    snapshot
        .endpoints
        .iter()
        .filter(up)
        .find(|e| e.info.region == app.config.region)
        .or_else(|| snapshot.endpoints.iter().find(up))
        .map(|e| e.info.index)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{option_user, startup_optimistic};

    #[test]
    fn user_from_startup_options() {
        assert_eq!(option_user("-c homeport.user=u1").as_deref(), Some("u1"));
        assert_eq!(
            option_user("-c search_path=x -chomeport.user=u2").as_deref(),
            Some("u2")
        );
        assert_eq!(option_user("--homeport.user=u3").as_deref(), Some("u3"));
        assert_eq!(option_user("-c search_path=x"), None);
        assert_eq!(option_user("-c homeport.user_x=u4"), None);
    }

    #[test]
    fn optimistic_transactions_from_startup() {
        let p = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        assert_eq!(
            startup_optimistic(&p(
                "options",
                "-c homeport.user=u -c homeport.optimistic_transactions=off"
            )),
            Some(false)
        );
        assert_eq!(
            startup_optimistic(&p("homeport.optimistic_transactions", "on")),
            Some(true)
        );
        assert_eq!(
            startup_optimistic(&p("options", "-c homeport.user=u")),
            None
        );
    }
}
