//! The SASL exchange that authenticates a wire client with SCRAM-SHA-256 (the pure side is in
//! `scram`): the messages, their size limit before login, and how failures are told apart.
//! See <https://www.postgresql.org/docs/15/sasl-authentication.html>.

use tokio::io::AsyncWriteExt;

use super::codec::{self, Message, ProtocolError};
use super::{ClientRead, ClientWrite, scram};

/// Why a SCRAM login failed: the client broke the protocol (08P01), or did not prove it knows
/// the password (28P01; also every unknown user).
pub(super) enum AuthFailure {
    Protocol(String),
    Failed(String),
}

impl From<scram::ScramError> for AuthFailure {
    fn from(e: scram::ScramError) -> Self {
        AuthFailure::Failed(e.to_string())
    }
}

/// The next authentication message from the client, at most [`codec::MAX_AUTH`] bytes long:
/// before login nobody gets to make homeport buffer more.
async fn auth_message(
    r: &mut codec::FramedReader<ClientRead>,
    what: &str,
) -> Result<Message, AuthFailure> {
    match r.next_limited(codec::MAX_AUTH).await {
        Ok(m) if m.tag == b'p' => Ok(m),
        Ok(m) => Err(AuthFailure::Protocol(format!(
            "expected a {what} message, got '{}'",
            m.tag as char
        ))),
        Err(ProtocolError::BadLength { len, .. }) => Err(AuthFailure::Protocol(format!(
            "invalid {what} message length {len} (at most {} bytes before authentication)",
            codec::MAX_AUTH
        ))),
        Err(e) => Err(AuthFailure::Protocol(e.to_string())),
    }
}

/// The SCRAM-SHA-256 exchange. An unknown user goes through the same steps, with a stable salt
/// and the same cost, against a mock verifier (see [`scram::Credentials::verifier`]), so the
/// answer does not tell which users exist.
pub(super) async fn authenticate(
    r: &mut codec::FramedReader<ClientRead>,
    w: &mut ClientWrite,
    credentials: &scram::Credentials,
    login: &str,
) -> Result<(), AuthFailure> {
    let (verifier, exists) = credentials.verifier(login);
    let send = |code: i32, data: &[u8]| {
        let mut body = code.to_be_bytes().to_vec();
        body.extend_from_slice(data);
        let mut buf = bytes::BytesMut::new();
        Message::new(b'R', body).write_to(&mut buf);
        buf
    };
    let io = |e: std::io::Error| AuthFailure::Protocol(e.to_string());
    w.write_all(&send(10, b"SCRAM-SHA-256\0\0"))
        .await
        .map_err(io)?;
    let first = auth_message(r, "SASLInitialResponse").await?;
    let malformed = |e: ProtocolError| AuthFailure::Protocol(e.to_string());
    let mut rd = codec::Reader::new(&first.body, "SASLInitialResponse");
    let mechanism = rd.cstr().map_err(malformed)?;
    if mechanism != "SCRAM-SHA-256" {
        return Err(AuthFailure::Failed(format!(
            "unsupported mechanism {mechanism}"
        )));
    }
    let _len = rd.i32().map_err(malformed)?;
    let client_first = std::str::from_utf8(rd.rest())
        .map_err(|_| AuthFailure::Protocol("client-first is not UTF-8".into()))?;
    let nonce = crate::random::bytes::<18>().map_err(|e| AuthFailure::Failed(e.to_string()))?;
    let server_nonce = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, nonce);
    let (exchange, server_first) = scram::server_first(&verifier, client_first, &server_nonce)?;
    w.write_all(&send(11, server_first.as_bytes()))
        .await
        .map_err(io)?;
    let fin = auth_message(r, "SASLResponse").await?;
    let client_final = std::str::from_utf8(&fin.body)
        .map_err(|_| AuthFailure::Protocol("client-final is not UTF-8".into()))?;
    let server_final = scram::server_final(&verifier, &exchange, client_final)?;
    if !exists {
        return Err(scram::ScramError::BadProof.into());
    }
    w.write_all(&send(12, server_final.as_bytes()))
        .await
        .map_err(io)?;
    Ok(())
}
