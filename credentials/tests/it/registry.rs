//! The registry: `auto`'s choice, unknown kinds and keys, and sources an application registers itself.

use std::sync::Arc;

use async_trait::async_trait;
use pgwi_credentials::{
    CredentialConfig, CredentialError, SourceContext, SourceInfo, SourceRegistry, Token,
    TokenSource,
};

use crate::support::Pod;

#[tokio::test]
async fn auto_picks_workload_identity_when_the_webhook_ran() {
    // Scenario: with the webhook's variables, auto picks workload identity and says why.
    let pod = Pod::start().await;

    let source = SourceRegistry::default()
        .build(&CredentialConfig::default(), &pod.context())
        .expect("source");
    let token = source.token().await.expect("token");

    assert_eq!(source.info().kind, "workload-identity");
    assert!(
        source
            .info()
            .detail("chosen_by")
            .is_some_and(|w| w.contains("AZURE_FEDERATED_TOKEN_FILE"))
    );
    assert_eq!(
        pod.entra.issued_tokens(),
        vec![token.secret().expose().to_owned()]
    );
}

#[tokio::test]
async fn auto_puts_a_configured_static_password_first() {
    // Scenario: the webhook ran but PGPASSWORD is set too: a static password the operator configured comes
    // first in the chain, and Entra is not asked.
    let pod = Pod::start().await;
    let mut pairs = pod.entra.webhook_environment(&pod.token_file);
    pairs.push(("PGPASSWORD".into(), "also-set".into()));
    let ctx = SourceContext {
        env: crate::support::test_env(pairs),
        ..pod.context()
    };

    let source = SourceRegistry::default()
        .build(&CredentialConfig::default(), &ctx)
        .expect("source");
    let token = source.token().await.expect("token");

    assert_eq!(token.secret().expose(), "also-set");
    assert_eq!(source.info().kind, "static-password");
    assert_eq!(pod.entra.request_count(), 0);
}

#[test]
fn an_unknown_kind_lists_the_known_ones() {
    // Scenario: a typo in credential.kind is a configuration error listing every kind.
    let config = CredentialConfig {
        kind: "workload_identity".into(),
        ..CredentialConfig::default()
    };

    let error = SourceRegistry::default()
        .build(
            &config,
            &crate::support::test_context(Vec::<(String, String)>::new()),
        )
        .expect_err("unknown");

    assert!(error.is_configuration());
    assert!(error.problem().contains("\"workload_identity\""), "{error}");
    assert!(
        error
            .fix()
            .contains("auto, az-cli, azure-developer-cli, client-certificate, client-secret, github-actions, managed-identity, static-password, workload-identity"),
        "{error}"
    );
}

#[test]
fn an_unknown_credential_key_is_refused() {
    // Scenario: a table for no registered kind (a typo) is refused instead of ignored.
    let mut config = CredentialConfig::default();
    config.custom.insert(
        "workload_identiy".into(),
        serde_json::json!({"client_id": "x"}),
    );

    let error = SourceRegistry::default()
        .build(
            &config,
            &crate::support::test_context(Vec::<(String, String)>::new()),
        )
        .expect_err("unknown key");

    assert!(
        error.problem().contains("credential.workload_identiy"),
        "{error}"
    );
}

#[derive(Debug)]
struct VaultSource {
    path: String,
}

#[async_trait]
impl TokenSource for VaultSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        Ok(Token::new(
            format!("vault-password-for-{}", self.path),
            None,
        ))
    }

    fn info(&self) -> SourceInfo {
        SourceInfo::new("vault").with("path", &self.path)
    }
}

#[tokio::test]
async fn an_application_registers_its_own_source() {
    // Scenario: an application adds a `vault` kind with its own `credential.vault` table, without forking.
    let mut registry = SourceRegistry::default();
    registry.register("vault", |config, _ctx| {
        let path = config
            .custom_section("vault")
            .and_then(|v| v.get("path"))
            .and_then(|v| v.as_str())
            .ok_or_else(|| {
                CredentialError::configuration(
                    "vault",
                    "credential.vault.path is not set",
                    "set it",
                )
            })?;
        Ok(Arc::new(VaultSource {
            path: path.to_owned(),
        }))
    });
    let mut config = CredentialConfig {
        kind: "vault".into(),
        ..CredentialConfig::default()
    };
    config
        .custom
        .insert("vault".into(), serde_json::json!({"path": "db/app"}));

    let source = registry
        .build(
            &config,
            &crate::support::test_context(Vec::<(String, String)>::new()),
        )
        .expect("source");
    let token = source.token().await.expect("token");

    assert_eq!(token.secret().expose(), "vault-password-for-db/app");
    assert!(registry.kinds().contains(&"vault".to_owned()));
    assert_eq!(source.to_string(), "vault (path=db/app)");
}
