//! The managed-identity source through the real `ManagedIdentityCredential` against the IMDS stand-in,
//! reached through the overridable IMDS address (the App Service endpoint, which the SDK reads from the
//! process environment, is tested end to end through `pgwi run`).

use pgwi_credentials::{CredentialConfig, ErrorKind, SourceRegistry};
use pgwi_testsupport::managed_identity::{ManagedIdentityOptions, ManagedIdentityStandIn};

use crate::support::test_context;

async fn imds() -> ManagedIdentityStandIn {
    pgwi_testsupport::init_test_logging();
    ManagedIdentityStandIn::start(ManagedIdentityOptions::new("vm-identity", vec![7; 32]))
        .await
        .expect("IMDS stand-in")
}

fn config() -> CredentialConfig {
    CredentialConfig {
        kind: "managed-identity".into(),
        ..CredentialConfig::default()
    }
}

#[tokio::test]
async fn the_system_assigned_identity_comes_from_imds() {
    // Scenario: a VM with a system-assigned identity: the SDK's IMDS request, redirected to the stand-in by
    // AZURE_POD_IDENTITY_AUTHORITY_HOST, carries Metadata: true and the PostgreSQL resource, and no client id.
    let imds = imds().await;
    let ctx = test_context([("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.imds_endpoint())]);

    let source = SourceRegistry::default()
        .build(&config(), &ctx)
        .expect("source");
    let token = source.token().await.expect("token");

    assert_eq!(
        imds.issued_tokens(),
        vec![token.secret().expose().to_owned()]
    );
    let requests = imds.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].starts_with("imds ") && !requests[0].contains("client_id"),
        "{requests:?}"
    );
    assert_eq!(source.info().detail("identity"), Some("system-assigned"));
    assert_eq!(imds.probes(), 1, "one probe before the first token");
}

#[tokio::test]
async fn a_user_assigned_identity_is_asked_for_by_client_id() {
    // Scenario: credential.managed_identity.client_id and imds_endpoint in configuration: the request names
    // the identity; a client id the VM does not have is "not assigned here", which auto skips.
    let imds = imds().await;
    let mut config = config();
    config.managed_identity.imds_endpoint = Some(imds.imds_endpoint());
    config.managed_identity.client_id = Some(imds.options().client_id.clone());
    let ctx = test_context(Vec::<(String, String)>::new());

    SourceRegistry::default()
        .build(&config, &ctx)
        .expect("source")
        .token()
        .await
        .expect("token");
    config.managed_identity.client_id = Some("00000000-0000-0000-0000-00000000dead".into());
    let error = SourceRegistry::default()
        .build(&config, &ctx)
        .expect("source")
        .token()
        .await
        .expect_err("not assigned");

    assert!(imds.requests()[0].contains(&format!("client_id={}", imds.options().client_id)));
    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.problem().contains("not assigned"), "{error}");
}

#[tokio::test]
async fn no_imds_is_unavailable_at_once() {
    // Scenario: off Azure nothing answers at the IMDS address: the probe says so (unavailable, so auto moves
    // on) instead of the SDK retrying for a minute.
    let ctx = test_context(Vec::<(String, String)>::new());

    let error = SourceRegistry::default()
        .build(&config(), &ctx)
        .expect("source")
        .token()
        .await
        .expect_err("no IMDS");

    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.is_unavailable());
    assert!(
        error.problem().contains("IMDS at http://127.0.0.1:9"),
        "{error}"
    );
}

#[tokio::test]
async fn another_clouds_metadata_service_is_not_taken_for_azures() {
    // Scenario: something answers at the metadata address but not as Azure's IMDS does (HTTP 404 where
    // Azure says 400 to a request without `Metadata: true`): unavailable, so auto moves on, and the SDK's
    // minute of retries never starts.
    let imds = imds().await;
    let ctx = test_context([(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        format!("{}/not-azure", imds.imds_endpoint()),
    )]);

    let error = SourceRegistry::default()
        .build(&config(), &ctx)
        .expect("source")
        .token()
        .await
        .expect_err("not Azure's IMDS");

    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.problem().contains("answered HTTP 404"), "{error}");
    assert!(imds.issued_tokens().is_empty());
}

#[test]
fn two_identities_at_once_are_refused() {
    // Scenario: client_id and resource_id both set: a configuration error naming both keys.
    let mut config = config();
    config.managed_identity.client_id = Some("a".into());
    config.managed_identity.resource_id = Some("/subscriptions/x".into());

    let error = SourceRegistry::default()
        .build(&config, &test_context(Vec::<(String, String)>::new()))
        .expect_err("ambiguous");

    assert!(error.is_configuration());
    assert!(
        error.problem().contains("client_id, resource_id"),
        "{error}"
    );
}
