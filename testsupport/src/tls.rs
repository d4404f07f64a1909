//! A certificate authority made for one test run, and a server certificate it signs for `localhost` and
//! `127.0.0.1`, so clients can use `verify-full` against the test PostgreSQL and the HTTPS stand-ins; and a
//! TLS server that stands in for PostgreSQL's TLS start with any such certificate, so a test can prove which
//! certificates a client accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::TestSupportError;

/// PEM-encoded CA certificate plus one server certificate and key signed by it.
pub struct TestCertificates {
    /// The CA certificate that clients must trust.
    pub ca_pem: String,
    /// The server certificate (leaf only), valid for `localhost`, `127.0.0.1` and `::1`.
    pub server_cert_pem: String,
    /// The server's private key in PKCS#8 PEM.
    pub server_key_pem: String,
}

impl std::fmt::Debug for TestCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCertificates")
            .field("server_key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl TestCertificates {
    /// Generates a fresh CA and a server certificate for the local host names.
    pub fn generate() -> Result<Self, TestSupportError> {
        Self::generate_for(&["localhost", "127.0.0.1", "::1"])
    }

    /// Generates a fresh CA and a server certificate for `names` (DNS names or IP addresses) only.
    pub fn generate_for(names: &[&str]) -> Result<Self, TestSupportError> {
        let tls = |e: rcgen::Error| TestSupportError::Tls(e.to_string());

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pgwi test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(tls)?)
            .map_err(tls)?;

        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let common_name = names.first().cloned().unwrap_or_default();
        let mut server_params = CertificateParams::new(names).map_err(tls)?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let server_key = KeyPair::generate().map_err(tls)?;
        let server_cert = server_params.signed_by(&server_key, &ca).map_err(tls)?;

        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }
}

/// A server on 127.0.0.1 that does what PostgreSQL does with a TLS client up to its start-up: answers the
/// `SSLRequest` with `S` and completes the TLS handshake with its certificate — then closes. It counts the
/// handshakes that completed: the ones the client accepted the certificate in.
pub struct TlsStandIn {
    port: u16,
    handshakes: Arc<AtomicUsize>,
    task: tokio::task::AbortHandle,
}

impl TlsStandIn {
    /// Starts serving `certs`' server certificate and key (must be called within a tokio runtime).
    pub async fn start(certs: &TestCertificates) -> Result<Self, TestSupportError> {
        let tls = |e: &dyn std::fmt::Display| TestSupportError::Tls(e.to_string());
        let chain = CertificateDer::pem_slice_iter(certs.server_cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| tls(&e))?;
        let key =
            PrivateKeyDer::from_pem_slice(certs.server_key_pem.as_bytes()).map_err(|e| tls(&e))?;
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| tls(&e))?;
        let port = listener.local_addr().map_err(|e| tls(&e))?.port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = handshakes.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = answer(tcp, acceptor).await {
                        counted.fetch_add(1, Ordering::SeqCst);
                        let _ = tls.shutdown().await;
                    }
                });
            }
        })
        .abort_handle();
        Ok(Self {
            port,
            handshakes,
            task,
        })
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// How many TLS handshakes completed: clients that accepted the certificate.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsStandIn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the 8-byte `SSLRequest`, answers `S`, and takes the TLS handshake.
async fn answer(
    mut tcp: tokio::net::TcpStream,
    acceptor: tokio_rustls::TlsAcceptor,
) -> std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>> {
    let mut request = [0u8; 8];
    tcp.read_exact(&mut request).await?;
    tcp.write_all(b"S").await?;
    acceptor.accept(tcp).await
}
