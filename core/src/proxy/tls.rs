//! TLS to the server for the proxy's upstream connections, under the rules the pool's connections follow
//! ([`crate::tls_rules`]).
//!
//! The pool's TLS is sqlx's, which offers no raw stream to copy bytes over; this builds the rules for
//! tokio-rustls with the same provider (ring). `verify-full` checks chain and host name against Mozilla's
//! roots (`webpki-roots`, as sqlx's `tls-rustls`) plus `database.ssl_root_cert`; `verify-ca` with a CA file
//! checks the chain against that file's CAs alone, not the name (without one it is `verify-full`); `require`
//! and `prefer` encrypt without checking.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

use crate::config::{ConfigError, DatabaseConfig};
use crate::tls_rules::{TlsRules, Verification};

/// The client configuration for `db` (`None` when TLS is not used), after saying once what the rules risk
/// or raise: the proxy calls this once, at start.
pub(crate) fn client_config(db: &DatabaseConfig) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let (host, _) = db.host_and_port()?;
    let rules = TlsRules::new(db, &host);
    rules.announce();
    build(&rules)
}

/// The client configuration that applies `rules`; `None` when TLS is not used.
fn build(rules: &TlsRules) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    build_with(
        rules,
        RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    )
}

/// [`build`] with `public` as the public roots (Mozilla's in production; a test's own CA in tests, which
/// can get no certificate from a real public CA).
fn build_with(
    rules: &TlsRules,
    public: RootCertStore,
) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| rejected(format!("cannot be used: {e}")))?;
    let config = match &rules.verification {
        Verification::Plaintext => return Ok(None),
        Verification::Unverified => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Relaxed {
                provider,
                chain: None,
            }))
            .with_no_client_auth(),
        // The file's CAs alone: with the public roots too, any certificate anyone can buy, for any name,
        // would pass a check that skips the name.
        Verification::ChainToFile(file) => {
            let mut roots = RootCertStore::empty();
            add_file(&mut roots, file)?;
            let chain =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| rejected(format!("cannot be used: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Relaxed {
                    provider,
                    chain: Some(chain),
                }))
                .with_no_client_auth()
        }
        Verification::Full(file) => {
            let mut roots = public;
            if let Some(file) = file {
                add_file(&mut roots, file)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Some(Arc::new(config)))
}

/// Adds the CA certificates of the PEM file `path` to `roots`.
fn add_file(roots: &mut RootCertStore, path: &Path) -> Result<(), ConfigError> {
    let pem = std::fs::read(path)
        .map_err(|e| rejected(format!("names {}, unreadable: {e}", path.display())))?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| {
            rejected(format!(
                "names {}, not PEM certificates: {e}",
                path.display()
            ))
        })?;
        roots.add(cert).map_err(|e| {
            rejected(format!(
                "names {}, with a bad certificate: {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}

/// `database.ssl_root_cert` cannot be used: `problem` says why.
fn rejected(problem: String) -> ConfigError {
    ConfigError::rejected(
        "database.ssl_root_cert",
        "configuration",
        problem,
        "point it at a readable PEM file of CA certificates",
    )
}

/// The name TLS checks the certificate against: a DNS name or an IP address.
pub(crate) fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{host:?} is not a host name: {e}"))
}

/// `require`/`prefer` (no `chain`: encryption without a certificate check) and `verify-ca` (the chain is
/// checked, the host name is not). Handshake signatures are verified either way.
#[derive(Debug)]
struct Relaxed {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SslMode;
    use pgwi_testsupport::tls::TestCertificates;
    use rustls::pki_types::PrivateKeyDer;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A TLS server on loopback with `cert_pem`/`key_pem` that writes `ok` to each client; its port.
    async fn server(cert_pem: &str, key_pem: &str) -> u16 {
        let certs = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("certificate");
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("address").port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let _ = tls.write_all(b"ok").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        port
    }

    /// A TLS handshake with the server at `port` under `sslmode`, checking the certificate against `name`,
    /// with `ca_pem` as `database.ssl_root_cert` and `public_pem` standing in for Mozilla's roots: what the
    /// server wrote, or the handshake's error.
    async fn handshake(
        port: u16,
        sslmode: SslMode,
        ca_pem: Option<&str>,
        public_pem: Option<&str>,
        name: &str,
    ) -> Result<Vec<u8>, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let ssl_root_cert = ca_pem.map(|pem| {
            let path = dir.path().join("ca.pem");
            std::fs::write(&path, pem).expect("write CA");
            path
        });
        let db = DatabaseConfig {
            sslmode,
            ssl_root_cert,
            ..DatabaseConfig::default()
        };
        let mut public = RootCertStore::empty();
        if let Some(pem) = public_pem {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                public.add(cert.expect("public CA")).expect("add");
            }
        }
        let config = build_with(&TlsRules::new(&db, name), public)
            .expect("client config")
            .expect("TLS");
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name(name).expect("name"), tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        tls.read_to_end(&mut out).await.map_err(|e| e.to_string())?;
        Ok(out)
    }

    #[tokio::test]
    async fn each_sslmode_checks_what_libpq_checks() {
        // Proves: verify-full accepts the certificate of a trusted CA for the right name and rejects it for
        // another name; verify-ca accepts it for another name but rejects a CA it does not trust; require
        // accepts a self-signed certificate (encryption without a check).
        let certs = TestCertificates::generate().expect("certificates");
        let port = server(&certs.server_cert_pem, &certs.server_key_pem).await;
        let ca = Some(certs.ca_pem.as_str());

        let right = handshake(port, SslMode::VerifyFull, ca, None, "localhost").await;
        assert_eq!(right.as_deref(), Ok(&b"ok"[..]));
        let wrong = handshake(port, SslMode::VerifyFull, ca, None, "db.example.com").await;
        assert!(
            wrong
                .as_ref()
                .is_err_and(|e| e.contains("not valid for name")),
            "{wrong:?}"
        );
        let ca_only = handshake(port, SslMode::VerifyCa, ca, None, "db.example.com").await;
        assert_eq!(ca_only.as_deref(), Ok(&b"ok"[..]));
        let untrusted = handshake(port, SslMode::VerifyCa, None, None, "localhost").await;
        assert!(
            untrusted.is_err(),
            "an unknown CA was trusted: {untrusted:?}"
        );

        let own = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let port = server(&own.cert.pem(), &own.signing_key.serialize_pem()).await;
        let encrypted = handshake(port, SslMode::Require, None, None, "db.example.com").await;
        assert_eq!(encrypted.as_deref(), Ok(&b"ok"[..]));
        let checked = handshake(port, SslMode::VerifyFull, None, None, "localhost").await;
        assert!(
            checked.is_err(),
            "a self-signed certificate passed verify-full"
        );
    }

    #[tokio::test]
    async fn verify_ca_never_takes_a_public_certificate_for_another_name() {
        // Proves the two verify-ca rules against a CA that stands in for a public one: with
        // database.ssl_root_cert, a certificate from a public CA is refused even though it names the host
        // (the file's CAs alone are trusted); without one, verify-ca is verify-full, so the public CA's
        // certificate for another name is refused and the one for the right name accepted.
        let public = TestCertificates::generate().expect("public CA");
        let port = server(&public.server_cert_pem, &public.server_key_pem).await;
        let private = TestCertificates::generate().expect("private CA");
        let public_ca = Some(public.ca_pem.as_str());

        let with_file = handshake(
            port,
            SslMode::VerifyCa,
            Some(&private.ca_pem),
            public_ca,
            "localhost",
        )
        .await;
        assert!(
            with_file.is_err(),
            "verify-ca with a CA file trusted a public CA: {with_file:?}"
        );
        let other_name =
            handshake(port, SslMode::VerifyCa, None, public_ca, "db.example.com").await;
        assert!(
            other_name
                .as_ref()
                .is_err_and(|e| e.contains("not valid for name")),
            "verify-ca with the public roots skipped the name: {other_name:?}"
        );
        let right_name = handshake(port, SslMode::VerifyCa, None, public_ca, "localhost").await;
        assert_eq!(right_name.as_deref(), Ok(&b"ok"[..]));
    }
}
