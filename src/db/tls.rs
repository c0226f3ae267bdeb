//! TLS from homeport to the PostgreSQL servers (`[postgres] sslmode = "verify-full"`): rustls
//! with the configured authorities, verifying the certificate chain and that the certificate
//! names the host homeport connected to. One client configuration serves the pools, the probes
//! and the wire front end's own server connections.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// How homeport connects to servers: in plain text, or TLS with full verification.
#[derive(Clone)]
pub enum ServerTls {
    Off,
    VerifyFull(Arc<rustls::ClientConfig>),
}

impl ServerTls {
    pub fn new(roots: Option<&Arc<rustls::RootCertStore>>) -> ServerTls {
        match roots {
            None => ServerTls::Off,
            Some(roots) => {
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let config = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots.as_ref().clone())
                    .with_no_client_auth();
                ServerTls::VerifyFull(Arc::new(config))
            }
        }
    }

    /// The connector for tokio-postgres (pools, probes).
    pub fn make_connect(&self) -> Option<tokio_postgres_rustls::MakeRustlsConnect> {
        match self {
            ServerTls::Off => None,
            ServerTls::VerifyFull(c) => Some(tokio_postgres_rustls::MakeRustlsConnect::new(
                c.as_ref().clone(),
            )),
        }
    }
}

/// A byte stream to a server: plain TCP or TLS over it.
pub trait ServerStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> ServerStream for T {}

/// After the server answered an SSLRequest with `S`: the TLS handshake, verifying the
/// certificate against `host`.
pub async fn handshake(
    config: &Arc<rustls::ClientConfig>,
    host: &str,
    tcp: TcpStream,
) -> std::io::Result<Box<dyn ServerStream>> {
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tls = tokio_rustls::TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await?;
    Ok(Box::new(tls))
}
