//! A client certificate for the `client-certificate` source: a fresh self-signed certificate for a fixed
//! RSA test key, as one PEM file (certificate, then key) and the public part to register on the Entra
//! stand-in.
//!
//! The key is a fixture (`keys/client-certificate-test-key.pem`, made with `openssl genpkey -algorithm RSA`)
//! because `ring`, the project's one crypto provider, cannot generate RSA keys, and Entra ID wants RS256
//! assertions. It protects nothing: it exists only for these tests. Its lines are registered with
//! [`crate::secrets`] so that the suites' leak checks catch a private key in any output.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use rcgen::{CertificateParams, DnType, KeyPair};

use crate::TestSupportError;
use crate::entra::RegisteredCertificate;

const TEST_KEY_PEM: &str = include_str!("../keys/client-certificate-test-key.pem");

/// A certificate and its key, and what Entra knows of it.
pub struct ClientCertificate {
    /// The certificate, PEM.
    pub certificate_pem: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// What to put in [`crate::entra::EntraOptions::certificates`].
    pub registered: RegisteredCertificate,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("registered", &self.registered)
            .finish_non_exhaustive()
    }
}

impl ClientCertificate {
    /// A new self-signed certificate named `common_name` for the test key.
    pub fn generate(common_name: &str) -> Result<Self, TestSupportError> {
        let tls = |e: rcgen::Error| TestSupportError::Tls(e.to_string());
        for line in TEST_KEY_PEM.lines().filter(|l| !l.starts_with("-----")) {
            crate::secrets::register(line);
        }
        let key = KeyPair::from_pem(TEST_KEY_PEM).map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let certificate = params.self_signed(&key).map_err(tls)?;
        let sha256 = ring::digest::digest(&ring::digest::SHA256, certificate.der());
        let sha1 = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, certificate.der());
        Ok(Self {
            certificate_pem: certificate.pem(),
            key_pem: TEST_KEY_PEM.to_owned(),
            registered: RegisteredCertificate {
                x5t_s256: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha256.as_ref()),
                x5t: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha1.as_ref()),
                public_key: key.public_key_raw().to_vec(),
            },
        })
    }

    /// Writes certificate and key to `dir/client-certificate.pem` (what `AZURE_CLIENT_CERTIFICATE_PATH`
    /// names) and returns the path.
    pub fn write_pem(&self, dir: &Path) -> Result<PathBuf, TestSupportError> {
        let path = dir.join("client-certificate.pem");
        std::fs::write(&path, format!("{}{}", self.certificate_pem, self.key_pem))
            .map_err(TestSupportError::io(format!("writing {}", path.display())))?;
        Ok(path)
    }
}
