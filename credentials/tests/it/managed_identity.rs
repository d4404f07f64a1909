//! The managed-identity source through the real `ManagedIdentityCredential` against the IMDS stand-in,
//! reached through the overridable IMDS address (the App Service endpoint, which the SDK reads from the
//! process environment, is tested end to end through `pgwi run`).

use pgwi_credentials::{CredentialConfig, ErrorKind, SourceRegistry, TokenSource as _};
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
    // the identity and its token comes back.
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

    assert!(imds.requests()[0].contains(&format!("client_id={}", imds.options().client_id)));
}

#[rstest::rstest]
#[case::configured(true, "credential.managed_identity.client_id")]
#[case::from_the_variable(false, "AZURE_CLIENT_ID")]
#[tokio::test]
async fn a_wrong_user_assigned_identity_is_a_failure_naming_where_it_came_from(
    #[case] in_configuration: bool,
    #[case] origin: &str,
) {
    // Scenario: a client id the VM does not have, from configuration or AZURE_CLIENT_ID: IMDS answers 400,
    // which is a configuration error naming the key or variable (not "unavailable", which auto would skip).
    let imds = imds().await;
    let wrong = "00000000-0000-0000-0000-00000000dead";
    let mut config = config();
    let mut env = vec![(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST".to_owned(),
        imds.imds_endpoint(),
    )];
    if in_configuration {
        config.managed_identity.client_id = Some(wrong.into());
    } else {
        env.push(("AZURE_CLIENT_ID".into(), wrong.into()));
    }

    let error = SourceRegistry::default()
        .build(&config, &test_context(env))
        .expect("source")
        .token()
        .await
        .expect_err("not assigned");

    assert_eq!(error.kind(), ErrorKind::Configuration, "{error}");
    assert!(!error.is_unavailable());
    assert!(
        error.problem().contains(wrong) && error.problem().contains(origin),
        "{error}"
    );
    assert!(
        error.problem().contains("No User Assigned"),
        "the endpoint's words: {error}"
    );
    assert!(error.fix().contains(origin), "{error}");
}

#[tokio::test]
async fn no_system_assigned_identity_is_unavailable() {
    // Scenario: a VM without a system-assigned identity and none configured: IMDS answers 400, which for the
    // system-assigned identity means "none here": unavailable, so auto moves on.
    let mut options = ManagedIdentityOptions::new("vm-identity", vec![7; 32]);
    options.system_assigned = false;
    let imds = ManagedIdentityStandIn::start(options).await.expect("IMDS");
    let ctx = test_context([("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.imds_endpoint())]);

    let error = SourceRegistry::default()
        .build(&config(), &ctx)
        .expect("source")
        .token()
        .await
        .expect_err("no identity");

    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(
        error.problem().contains("no system-assigned identity"),
        "{error}"
    );
}

#[tokio::test]
async fn a_wrong_scope_is_a_configuration_error_naming_credential_scope() {
    // Scenario: credential.scope names a resource Entra does not know: the endpoint's invalid_resource
    // (AADSTS500011) is a configuration error naming credential.scope, not "identity not assigned".
    let imds = imds().await;
    let mut config = config();
    config.scope = "https://not-a-resource.example/.default".into();
    let ctx = test_context([("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.imds_endpoint())]);

    let error = SourceRegistry::default()
        .build(&config, &ctx)
        .expect("source")
        .token()
        .await
        .expect_err("unknown resource");

    assert_eq!(error.kind(), ErrorKind::Configuration, "{error}");
    assert!(error.problem().contains("credential.scope"), "{error}");
    assert!(error.problem().contains("AADSTS500011"), "{error}");
    assert!(error.fix().contains("credential.scope"), "{error}");
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

#[tokio::test]
async fn a_garbled_answer_at_the_metadata_address_is_reported_as_such() {
    // Scenario: something at the metadata address answers, but not with HTTP: unavailable, saying it
    // answered without HTTP (not that it refused the connection), so auto moves on.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt as _;
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await;
        }
    });
    let ctx = test_context([(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
        format!("http://{address}"),
    )]);

    let error = SourceRegistry::default()
        .build(&config(), &ctx)
        .expect("source")
        .token()
        .await
        .expect_err("not IMDS");

    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.problem().contains("not with HTTP"), "{error}");
    assert!(error.problem().contains("SSH-2.0"), "{error}");
}

#[test]
fn service_fabric_is_named_as_such_and_unavailable() {
    // Scenario: Service Fabric's variables (IDENTITY_ENDPOINT, IDENTITY_HEADER and
    // IDENTITY_SERVER_THUMBPRINT): the source names Service Fabric (not App Service) as unsupported, and
    // auto's presence check skips it without building anything.
    let ctx = test_context([
        (
            "IDENTITY_ENDPOINT",
            "https://127.0.0.1:2377/metadata/identity/oauth2/token",
        ),
        ("IDENTITY_HEADER", "unused-header-value-0123"),
        ("IDENTITY_SERVER_THUMBPRINT", "ABCDEF0123456789"),
    ]);

    let error = SourceRegistry::default()
        .build(&config(), &ctx)
        .expect_err("unsupported");
    let presence = SourceRegistry::default().presence("managed-identity", &config(), &ctx);

    assert_eq!(error.kind(), ErrorKind::Unavailable, "{error}");
    assert!(error.problem().contains("Service Fabric"), "{error}");
    assert!(!error.problem().contains("App Service"), "{error}");
    assert!(
        presence
            .as_ref()
            .is_err_and(|why| why.contains("Service Fabric")),
        "{presence:?}"
    );
}

#[tokio::test]
async fn imds_answering_410_is_cut_at_the_deadline_with_the_last_status() {
    // Scenario: IMDS answers 410 to every token request (as while an identity is being set up), which the
    // SDK's VM credential retries for up to 72 s with its own retry options: the source ends the request
    // within credential.fetch_timeout_secs (a cache with that deadline never has to cut it), with a Timeout
    // error that names the status IMDS kept answering.
    let mut options = ManagedIdentityOptions::new("vm-identity", vec![7; 32]);
    options.imds_status = Some(410);
    let imds = ManagedIdentityStandIn::start(options).await.expect("IMDS");
    let config = CredentialConfig {
        fetch_timeout_secs: 5,
        ..config()
    };
    let ctx = test_context([("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.imds_endpoint())]);
    let cached = SourceRegistry::default()
        .build_cached(&config, &ctx)
        .expect("source");

    let error = cached.token().await.expect_err("IMDS keeps answering 410");

    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert_eq!(error.source_name(), "managed-identity", "{error}");
    assert!(
        error.problem().contains("kept answering HTTP 410"),
        "{error}"
    );
    assert!(
        imds.requests().len() >= 2,
        "the SDK retried: {:?}",
        imds.requests()
    );
}
