//! The registry: `auto`'s choice, unknown kinds and keys (an application's own kinds: `kinds.rs`).

use pgwi_credentials::{CredentialConfig, SourceContext, SourceRegistry};

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
