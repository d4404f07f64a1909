//! Shared set-up: an Entra stand-in with a projected token file, contexts that point sources at it, and
//! environments that never let a source reach Azure's real metadata address.

use pgwi_credentials::{CredentialConfig, Environment, SourceContext};
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, write_token_file};
use pgwi_testsupport::jwt::ServiceAccountToken;

/// Exactly these variables, plus an IMDS address on loopback where nothing listens: no test may reach
/// Azure's real metadata address (169.254.169.254). A test with an IMDS stand-in passes its own address.
pub(crate) fn test_env<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> Environment {
    let mut vars: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    if !vars
        .iter()
        .any(|(k, _)| k == "AZURE_POD_IDENTITY_AUTHORITY_HOST")
    {
        vars.push((
            "AZURE_POD_IDENTITY_AUTHORITY_HOST".into(),
            pgwi_testsupport::managed_identity::unreachable_imds_endpoint(),
        ));
    }
    Environment::from_pairs(vars)
}

/// A context reading exactly [`test_env`]`(pairs)`.
pub(crate) fn test_context<K: Into<String>, V: Into<String>>(
    pairs: impl IntoIterator<Item = (K, V)>,
) -> SourceContext {
    SourceContext {
        env: test_env(pairs),
        ..SourceContext::default()
    }
}

/// A pod as AKS would run it: a projected token on disk, the webhook's variables, and Entra to talk to.
pub(crate) struct Pod {
    pub(crate) entra: EntraStandIn,
    pub(crate) sa_token: String,
    pub(crate) token_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Pod {
    pub(crate) async fn start() -> Self {
        pgwi_testsupport::init_test_logging();
        let sa_token = ServiceAccountToken::default().encode();
        let dir = tempfile::tempdir().expect("temp dir");
        let token_file = write_token_file(dir.path(), &sa_token).expect("token file");
        let entra = EntraStandIn::start(EntraOptions::new(sa_token.clone()))
            .await
            .expect("Entra stand-in");
        Self {
            entra,
            sa_token,
            token_file,
            _dir: dir,
        }
    }

    /// The webhook's variables, and SDK options that trust the stand-in.
    pub(crate) fn context(&self) -> SourceContext {
        SourceContext {
            env: test_env(self.entra.webhook_environment(&self.token_file)),
            azure_client_options: Some(self.entra.azure_client_options().expect("client options")),
        }
    }

    pub(crate) fn config(&self) -> CredentialConfig {
        CredentialConfig {
            kind: "workload-identity".into(),
            ..CredentialConfig::default()
        }
    }
}
