//! TLS on the chat and HTTP listeners (`--tls-cert`, `--tls-key`).
//!
//! The certificate chain and key are read from PEM files into a rustls
//! `ServerConfig` (ring provider), kept in [`Tls`]. [`Tls::reload`] (on
//! SIGHUP) reads the files again and swaps the config in: connections
//! accepted afterwards present the new certificate, open ones keep the
//! session they negotiated. A reload that fails keeps the old config.
//!
//! The handshake runs in the connection's own task, bounded by
//! [`HANDSHAKE_WAIT`], never in an accept loop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish the TLS handshake.
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// The node's TLS settings: where the certificate and key are, and the
/// config made from them, which [`Tls::reload`] replaces.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the certificate chain (PEM, leaf first) from `cert` and the
    /// private key (PEM: PKCS#8, PKCS#1 or SEC1) from `key`.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<Tls> {
        let config = server_config(cert, key)?;
        Ok(Tls {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again. On success new connections use the new
    /// certificate; on error the old one stays in use.
    pub fn reload(&self) -> anyhow::Result<()> {
        let config = Arc::new(server_config(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(())
    }

    /// The config new connections get.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The TLS handshake on an accepted connection, bounded by
    /// [`HANDSHAKE_WAIT`]. None (logged at debug, with the peer) if it
    /// failed or took too long; the caller then drops the connection.
    pub async fn accept<IO>(&self, io: IO, peer: SocketAddr) -> Option<TlsStream<IO>>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = TlsAcceptor::from(self.config());
        match tokio::time::timeout(HANDSHAKE_WAIT, acceptor.accept(io)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "TLS handshake failed; closing");
                None
            }
            Err(_) => {
                tracing::debug!(%peer, "no TLS handshake in time; closing");
                None
            }
        }
    }
}

/// A rustls server config (ring, TLS 1.2 and 1.3, no client certificates)
/// for the chain in `cert` and the key in `key`.
fn server_config(cert: &Path, key: &Path) -> anyhow::Result<ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate (BEGIN CERTIFICATE) in {}",
        cert.display()
    );
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the TLS private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "the TLS certificate {} and key {} do not make a usable pair",
                cert.display(),
                key.display()
            )
        })
}
