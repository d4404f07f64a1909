//! The github-actions source: the job's OIDC token from the stand-in's GitHub endpoint, exchanged with the
//! Entra stand-in as a client assertion.

use pgwi_credentials::{CredentialConfig, ErrorKind, SourceContext, SourceRegistry};
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn};

use crate::support::test_env;

async fn federated_application() -> EntraStandIn {
    pgwi_testsupport::init_test_logging();
    EntraStandIn::start(EntraOptions::new("no workload identity here"))
        .await
        .expect("Entra stand-in")
}

fn context(entra: &EntraStandIn) -> SourceContext {
    SourceContext {
        env: test_env(entra.github_environment()),
        azure_client_options: Some(entra.azure_client_options().expect("client options")),
    }
}

fn config() -> CredentialConfig {
    CredentialConfig {
        kind: "github-actions".into(),
        ..CredentialConfig::default()
    }
}

#[tokio::test]
async fn the_jobs_oidc_token_is_exchanged_for_an_entra_token() {
    // Scenario: a job with id-token: write; pgwi asks GitHub for a token with the exchange audience and
    // Entra accepts it as the assertion of the federated application.
    let entra = federated_application().await;

    let source = SourceRegistry::default()
        .build(&config(), &context(&entra))
        .expect("source");
    let token = source.token().await.expect("token");

    assert_eq!(
        entra.issued_tokens(),
        vec![token.secret().expose().to_owned()]
    );
    let job_tokens = entra.github_tokens();
    assert_eq!(job_tokens.len(), 1);
    let claims = pgwi_credentials::Claims::decode_unverified(&job_tokens[0]).expect("a JWT");
    assert_eq!(
        claims.get("aud").as_deref(),
        Some("api://AzureADTokenExchange")
    );
}

#[test]
fn missing_variables_say_permissions_id_token_write() {
    // Scenario: the workflow lacks `permissions: id-token: write`, so GitHub set no request variables: one
    // configuration error naming them and the permission.
    let ctx =
        crate::support::test_context([("AZURE_CLIENT_ID", "app"), ("AZURE_TENANT_ID", "tenant")]);

    let error = SourceRegistry::default()
        .build(&config(), &ctx)
        .expect_err("no OIDC variables");

    assert!(error.is_configuration());
    assert!(
        error.problem().contains("ACTIONS_ID_TOKEN_REQUEST_URL"),
        "{error}"
    );
    assert!(
        error.fix().contains("permissions: id-token: write"),
        "{error}"
    );
}

#[tokio::test]
async fn a_refused_job_token_request_is_one_error_without_the_request_token() {
    // Scenario: GitHub refuses the job-token request (HTTP 403): the error says so with what to check, and
    // never carries the request token.
    let entra = federated_application().await;
    entra.refuse_github(Some(403));

    let error = SourceRegistry::default()
        .build(&config(), &context(&entra))
        .expect("source")
        .token()
        .await
        .expect_err("refused");

    assert_eq!(error.kind(), ErrorKind::Upstream);
    assert!(error.problem().contains("HTTP 403"), "{error}");
    assert!(error.fix().contains("id-token: write"), "{error}");
    assert!(
        !error
            .to_string()
            .contains(&entra.options().github_request_token)
    );
    assert_eq!(
        entra.request_count(),
        0,
        "no Entra request without a job token"
    );
}

#[tokio::test]
async fn a_subject_mismatch_shows_the_federated_credential_to_create() {
    // Scenario: the job runs on another branch than the federated credential names: AADSTS700213, and the
    // fix quotes the job token's subject for the federated credential.
    let mut options = EntraOptions::new("no workload identity here");
    options.github_job_subject = "repo:pgwi/pgwi:ref:refs/heads/feature".into();
    let entra = EntraStandIn::start(options).await.expect("Entra stand-in");

    let error = SourceRegistry::default()
        .build(&config(), &context(&entra))
        .expect("source")
        .token()
        .await
        .expect_err("mismatch");

    assert_eq!(error.code(), Some("700213"), "{error}");
    assert!(
        error
            .fix()
            .contains("subject=repo:pgwi/pgwi:ref:refs/heads/feature")
            && error
                .fix()
                .contains("issuer=https://token.actions.githubusercontent.com"),
        "{error}"
    );
}
