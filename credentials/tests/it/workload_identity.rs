//! The workload-identity source through the real `azure_identity` code path against the Entra stand-in.

use std::time::Duration;

use pgwi_credentials::{Claims, CredentialConfig, ErrorKind, SourceContext, SourceRegistry};
use pgwi_testsupport::entra::Fault;
use rstest::rstest;

use crate::support::Pod;

#[tokio::test]
async fn token_and_expiry_come_back_from_entra() {
    // Scenario: with the webhook's variables, the source exchanges the projected token for an access token
    // whose expiry matches the lifetime Entra announced.
    let pod = Pod::start().await;
    let source = SourceRegistry::default()
        .build(&pod.config(), &pod.context())
        .expect("source");

    let token = source.token().await.expect("token");

    assert_eq!(
        pod.entra.issued_tokens(),
        vec![token.secret().expose().to_owned()]
    );
    let expires_in = token.expires_at().expect("expiry") - time::OffsetDateTime::now_utc();
    assert!(
        expires_in > time::Duration::minutes(59) && expires_in <= time::Duration::hours(1),
        "{expires_in}"
    );
    let claims = token.claims().expect("a JWT");
    assert_eq!(claims.database_user().as_deref(), Some("pgwi-app"));
    assert_eq!(
        source.info().detail("client_id"),
        Some(pod.entra.options().client_id.as_str())
    );
}

#[tokio::test]
async fn configuration_overrides_the_webhook_variables() {
    // Scenario: a client id from configuration wins over AZURE_CLIENT_ID, so Entra sees the configured one.
    let pod = Pod::start().await;
    let mut config = pod.config();
    config.workload_identity.client_id = Some("11111111-2222-3333-4444-555555555555".into());
    let source = SourceRegistry::default()
        .build(&config, &pod.context())
        .expect("source");

    let error = source.token().await.expect_err("unknown client id");

    assert_eq!(error.code(), Some("700016"));
    assert!(
        error.fix().contains("11111111-2222-3333-4444-555555555555"),
        "{error}"
    );
    assert_eq!(
        pod.entra.rejections(),
        vec!["client_id 11111111-2222-3333-4444-555555555555".to_owned()]
    );
}

#[rstest]
#[case::client_id("AZURE_CLIENT_ID")]
#[case::tenant_id("AZURE_TENANT_ID")]
#[case::token_file("AZURE_FEDERATED_TOKEN_FILE")]
#[tokio::test]
async fn a_missing_webhook_variable_names_itself_and_the_injection(#[case] missing: &str) {
    // Scenario: without one of the webhook's variables, the error names it and what injects it.
    let pod = Pod::start().await;
    let env = pod
        .entra
        .webhook_environment(&pod.token_file)
        .into_iter()
        .filter(|(k, _)| k != missing);
    let ctx = SourceContext {
        env: crate::support::test_env(env),
        ..pod.context()
    };

    let error = SourceRegistry::default()
        .build(&pod.config(), &ctx)
        .expect_err("must fail");

    assert!(error.is_configuration());
    assert!(error.problem().contains(missing), "{error}");
    assert!(
        error.fix().contains("azure.workload.identity/use"),
        "{error}"
    );
    assert!(
        error.fix().contains("azure.workload.identity/client-id"),
        "{error}"
    );
    assert!(error.fix().contains("serviceAccountName"), "{error}");
}

#[rstest]
#[case::missing(None)]
#[case::empty(Some(""))]
#[tokio::test]
async fn an_unreadable_or_empty_token_file_names_the_path(#[case] contents: Option<&str>) {
    // Scenario: the token file is absent or empty; the error names the path and the webhook settings.
    let pod = Pod::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("projected-token");
    if let Some(contents) = contents {
        std::fs::write(&path, contents).expect("write");
    }
    let mut config = pod.config();
    config.workload_identity.token_file = Some(path.clone());

    let error = SourceRegistry::default()
        .build(&config, &pod.context())
        .expect_err("must fail");

    assert_eq!(error.kind(), ErrorKind::MissingInput);
    assert!(
        error.problem().contains(&path.display().to_string()),
        "{error}"
    );
    assert!(
        error.fix().contains("azure.workload.identity/use"),
        "{error}"
    );
}

#[tokio::test]
async fn federated_credential_mismatch_shows_the_claims_that_must_match() {
    // Scenario: Entra answers AADSTS70021; the error carries the projected token's iss/sub/aud and the
    // federated credential that would match.
    let pod = Pod::start().await;
    pod.entra.push_fault(Fault::Aadsts(
        70021,
        "No matching federated identity record found for presented assertion.".into(),
    ));
    let source = SourceRegistry::default()
        .build(&pod.config(), &pod.context())
        .expect("source");

    let error = source.token().await.expect_err("must fail");

    let claims = Claims::decode_unverified(&pod.sa_token).expect("claims");
    assert_eq!(error.kind(), ErrorKind::Entra);
    assert_eq!(error.code(), Some("70021"));
    assert!(error.problem().contains("AADSTS70021"), "{error}");
    assert!(
        error
            .fix()
            .contains("subject=system:serviceaccount:app:app"),
        "{error}"
    );
    assert!(
        error
            .fix()
            .contains(&format!("issuer={}", claims.get("iss").expect("iss"))),
        "{error}"
    );
    assert!(
        error.fix().contains("audience=api://AzureADTokenExchange"),
        "{error}"
    );
}

#[rstest]
#[case::unknown_client(Fault::Aadsts(700016, "Application not found.".into()), ErrorKind::Entra, "client id")]
#[case::unknown_tenant(Fault::Aadsts(90002, "Tenant not found.".into()), ErrorKind::Entra, "AZURE_TENANT_ID")]
#[case::throttled(Fault::Throttled, ErrorKind::Throttled, "throttling")]
#[case::server_error(Fault::ServerError, ErrorKind::Entra, "AADSTS50000")]
#[case::malformed(Fault::Malformed, ErrorKind::Upstream, "network path")]
#[tokio::test]
async fn entra_errors_carry_their_fix(
    #[case] fault: Fault,
    #[case] kind: ErrorKind,
    #[case] fix: &str,
) {
    // Scenario: each well-known failure of the token endpoint becomes an error of its kind, with its fix.
    let pod = Pod::start().await;
    pod.entra.push_fault(fault);
    let source = SourceRegistry::default()
        .build(&pod.config(), &pod.context())
        .expect("source");

    let error = source.token().await.expect_err("must fail");

    assert_eq!(error.kind(), kind, "{error}");
    assert!(error.fix().contains(fix), "{error}");
}

#[tokio::test]
async fn other_clouds_use_the_configured_scope() {
    // Scenario: a sovereign cloud's scope is sent as configured; a wrong scope is refused by Entra.
    let pod = Pod::start().await;
    let mut config = pod.config();
    config.scope = "https://ossrdbms-aad.database.usgovcloudapi.net/.default".into();
    let source = SourceRegistry::default()
        .build(&config, &pod.context())
        .expect("source");

    let error = source
        .token()
        .await
        .expect_err("the stand-in expects the public scope");

    assert_eq!(error.code(), Some("70011"));
    assert_eq!(
        pod.entra.rejections(),
        vec!["scope https://ossrdbms-aad.database.usgovcloudapi.net/.default".to_owned()]
    );
}

#[tokio::test]
async fn http_authority_hosts_are_refused_as_configuration() {
    // Scenario: AZURE_AUTHORITY_HOST over plain HTTP is a configuration error, not a silent downgrade.
    let pod = Pod::start().await;
    let mut config = pod.config();
    config.workload_identity.authority_host = Some("http://127.0.0.1:1/".into());

    let error = SourceRegistry::default()
        .build(&config, &pod.context())
        .expect_err("must fail");

    assert!(error.is_configuration());
    assert!(error.problem().contains("https://"), "{error}");
}

#[tokio::test]
async fn slow_entra_still_answers() {
    // Scenario: a delayed answer from the token endpoint is waited for.
    let pod = Pod::start().await;
    pod.entra
        .push_fault(Fault::Delay(Duration::from_millis(300)));
    let config = CredentialConfig {
        kind: "workload-identity".into(),
        ..CredentialConfig::default()
    };
    let source = SourceRegistry::default()
        .build(&config, &pod.context())
        .expect("source");

    source.token().await.expect("token after the delay");

    assert_eq!(pod.entra.issued_tokens().len(), 1);
}
