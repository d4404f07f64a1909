//! The azure-developer-cli source through the real `AzureDeveloperCliCredential` against a fake `azd`.

use pgwi_credentials::{CredentialConfig, ErrorKind, SourceRegistry};
use pgwi_testsupport::az::{AzBehaviour, FakeAz, FakeTool};
use pgwi_testsupport::jwt;

fn config() -> CredentialConfig {
    CredentialConfig {
        kind: "azure-developer-cli".into(),
        ..CredentialConfig::default()
    }
}

#[tokio::test]
async fn token_and_expiry_come_from_azd() {
    // Scenario: azd prints a token; the source returns it with azd's expiry, asking for the PostgreSQL scope
    // in the configured tenant.
    let expires_on = jwt::unix_now() + 3000;
    let azd = FakeAz::install_tool(
        FakeTool::Azd,
        AzBehaviour::Token {
            access_token: "azd-access-token-value".into(),
            expires_on,
        },
    )
    .expect("fake azd");
    let mut config = config();
    config.azure_developer_cli.tenant_id = Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into());

    let source = SourceRegistry::default()
        .build(
            &config,
            &crate::support::test_context([("PATH", azd.path_env())]),
        )
        .expect("source");
    let token = source.token().await.expect("token");

    assert_eq!(token.secret().expose(), "azd-access-token-value");
    assert_eq!(
        token.expires_at().map(|t| t.unix_timestamp()),
        Some(expires_on)
    );
    let calls = azd.calls();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].starts_with("auth token -o json --no-prompt --scope https://ossrdbms-aad.database.windows.net/.default")
            && calls[0].contains("--tenant-id 72f988bf-86f1-41af-91ab-2d7cd011db47"),
        "{calls:?}"
    );
}

#[tokio::test]
async fn not_logged_in_says_azd_auth_login() {
    // Scenario: azd is installed but not logged in: the error says so and how to log in (auto skips it).
    let azd = FakeAz::install_tool(FakeTool::Azd, AzBehaviour::NotLoggedIn).expect("fake azd");

    let error = SourceRegistry::default()
        .build(
            &config(),
            &crate::support::test_context([("PATH", azd.path_env())]),
        )
        .expect("source")
        .token()
        .await
        .expect_err("not logged in");

    assert_eq!(error.kind(), ErrorKind::AzCliNotLoggedIn, "{error}");
    assert!(error.fix().contains("azd auth login"), "{error}");
    assert!(error.is_unavailable());
}

#[tokio::test]
async fn a_hanging_azd_is_killed_at_its_deadline() {
    // Scenario: azd hangs; it is killed after credential.azure_developer_cli.timeout_secs, and the error
    // names that key.
    let azd = FakeAz::install_tool(FakeTool::Azd, AzBehaviour::Hang).expect("fake azd");
    let mut config = config();
    config.azure_developer_cli.timeout_secs = Some(1);

    let error = SourceRegistry::default()
        .build(
            &config,
            &crate::support::test_context([("PATH", azd.path_env())]),
        )
        .expect("source")
        .token()
        .await
        .expect_err("timed out");

    assert_eq!(error.kind(), ErrorKind::AzCliTimeout, "{error}");
    assert!(
        error
            .fix()
            .contains("credential.azure_developer_cli.timeout_secs"),
        "{error}"
    );
}
