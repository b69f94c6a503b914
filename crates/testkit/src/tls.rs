//! TLS for tests: a throwaway CA and a server certificate it signed (for
//! `localhost` and 127.0.0.1), written as PEM files for `--tls-cert` and
//! `--tls-key`, and client connections that trust only that CA.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;

use crate::client::RECV_TIMEOUT;

/// A CA and a server certificate it signed, as PEM files in a directory.
pub struct TestCerts {
    /// The CA certificate (what clients trust).
    pub ca: PathBuf,
    /// The server's certificate chain (leaf, then the CA).
    pub cert: PathBuf,
    /// The server's private key (PKCS#8).
    pub key: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl TestCerts {
    /// A new CA (named `ca_name`) and server certificate, in a temporary
    /// directory of their own.
    pub fn new(ca_name: &str) -> TestCerts {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = Self::write_in(dir.path(), ca_name);
        c._dir = Some(dir);
        c
    }

    /// A new CA and server certificate written to `ca.pem`, `cert.pem` and
    /// `key.pem` in `dir` (replacing what is there).
    pub fn write_in(dir: &Path, ca_name: &str) -> TestCerts {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let leaf = params.signed_by(&key, &*ca).expect("server certificate");
        let c = TestCerts {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            _dir: None,
        };
        // Written beside, then renamed: a reload never reads half a file.
        let write = |path: &Path, text: String| {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write PEM");
            std::fs::rename(&tmp, path).expect("rename PEM");
        };
        write(&c.ca, ca.pem());
        write(&c.cert, format!("{}{}", leaf.pem(), ca.pem()));
        write(&c.key, key.serialize_pem());
        c
    }

    /// The server side: a [`clusterchat::tls::Tls`] for these files.
    pub fn server(&self) -> Arc<clusterchat::tls::Tls> {
        Arc::new(clusterchat::tls::Tls::load(&self.cert, &self.key).expect("load TLS files"))
    }

    /// A client config that trusts this CA only.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca)
    }
}

/// A client config (ring) that trusts only the CA certificates in `ca`.
pub fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read CA") {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS client stream.
pub type TlsStream = tokio_rustls::client::TlsStream<TcpStream>;

/// Connects to `addr` and completes a TLS handshake that verifies the
/// server as `localhost` with `config`; or says why not.
pub async fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Result<TlsStream, String> {
    let go = async {
        let sock = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect failed: {e}"))?;
        sock.set_nodelay(true)
            .map_err(|e| format!("nodelay: {e}"))?;
        let name = ServerName::try_from("localhost").expect("name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, sock)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))
    };
    tokio::time::timeout(RECV_TIMEOUT, go)
        .await
        .map_err(|_| "TLS connect timed out".to_owned())?
}
