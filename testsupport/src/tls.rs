//! A certificate authority made for one test run, and a server certificate it signs for `localhost` and
//! `127.0.0.1`, so clients can use `verify-full` against the test PostgreSQL and the HTTPS stand-ins.

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
        let tls = |e: rcgen::Error| TestSupportError::Tls(e.to_string());

        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "pgwi test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(tls)?)
            .map_err(tls)?;

        let names = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        let mut server_params = CertificateParams::new(names).map_err(tls)?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let server_key = KeyPair::generate().map_err(tls)?;
        let server_cert = server_params.signed_by(&server_key, &ca).map_err(tls)?;

        Ok(Self {
            ca_pem: ca.pem(),
            server_cert_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
        })
    }
}
