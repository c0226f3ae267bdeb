//! TLS towards wire clients (rustls): a client that sends SSLRequest gets `S` and a TLS
//! handshake when a certificate is configured, `N` otherwise; `tls_required` refuses clients that
//! stay in plain text.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::PgTlsConfig;

pub struct TlsSettings {
    pub acceptor: TlsAcceptor,
    pub required: bool,
}

/// Loads the certificate chain and key; the error names the file and what is wrong with it.
pub fn load(config: &PgTlsConfig) -> Result<TlsSettings, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&config.cert_file)
        .map_err(|e| format!("pg.tls_cert_file {}: {e}", config.cert_file.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("pg.tls_cert_file {}: {e}", config.cert_file.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "pg.tls_cert_file {}: no certificate found",
            config.cert_file.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&config.key_file)
        .map_err(|e| format!("pg.tls_key_file {}: {e}", config.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("pg.tls_cert_file / pg.tls_key_file: {e}"))?;
    Ok(TlsSettings {
        acceptor: TlsAcceptor::from(Arc::new(server)),
        required: config.required,
    })
}
