//! The az-cli source through the real `AzureCliCredential` against a fake `az` first on PATH.

use std::time::{Duration, Instant};

use pgwi_credentials::{CredentialConfig, ErrorKind, SourceContext, SourceRegistry, TimingProblem};
use pgwi_testsupport::az::{AzBehaviour, FakeAz};
use pgwi_testsupport::jwt;

fn az_config() -> CredentialConfig {
    CredentialConfig {
        kind: "az-cli".into(),
        ..CredentialConfig::default()
    }
}

fn context(path: &str) -> SourceContext {
    SourceContext {
        env: crate::support::test_env([("PATH", path)]),
        ..SourceContext::default()
    }
}

#[tokio::test]
async fn token_and_expiry_come_from_az() {
    // Scenario: az prints a token; the source returns it with az's expiry and asked for the PostgreSQL scope
    // in the configured tenant.
    let expires_on = jwt::unix_now() + 3000;
    let az = FakeAz::install(AzBehaviour::Token {
        access_token: "az-access-token-value".into(),
        expires_on,
    })
    .expect("fake az");
    let mut config = az_config();
    config.az_cli.tenant_id = Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into());
    let source = SourceRegistry::default()
        .build(&config, &context(&az.path_env()))
        .expect("source");

    let token = source.token().await.expect("token");

    assert_eq!(token.secret().expose(), "az-access-token-value");
    assert_eq!(
        token.expires_at().map(|t| t.unix_timestamp()),
        Some(expires_on)
    );
    let calls = az.calls();
    assert_eq!(calls.len(), 1);
    assert!(
        calls[0].starts_with("account get-access-token -o json"),
        "{calls:?}"
    );
    assert!(
        calls[0].contains("--scope https://ossrdbms-aad.database.windows.net/.default"),
        "{calls:?}"
    );
    assert!(
        calls[0].contains("--tenant 72f988bf-86f1-41af-91ab-2d7cd011db47"),
        "{calls:?}"
    );
}

#[tokio::test]
async fn not_logged_in_says_az_login() {
    // Scenario: az is installed but not logged in; the error says so and how to log in.
    let az = FakeAz::install(AzBehaviour::NotLoggedIn).expect("fake az");
    let source = SourceRegistry::default()
        .build(&az_config(), &context(&az.path_env()))
        .expect("source");

    let error = source.token().await.expect_err("must fail");

    assert_eq!(error.kind(), ErrorKind::AzCliNotLoggedIn, "{error}");
    assert!(error.fix().contains("az login"), "{error}");
}

#[tokio::test]
async fn missing_az_says_how_to_install_it() {
    // Scenario: no az on PATH; the error says to install it or choose another kind.
    let path = FakeAz::path_without_az();
    let source = SourceRegistry::default()
        .build(&az_config(), &context(&path.display().to_string()))
        .expect("source");

    let error = source.token().await.expect_err("must fail");

    assert_eq!(error.kind(), ErrorKind::AzCliMissing, "{error}");
    assert!(error.fix().contains("install the Azure CLI"), "{error}");
}

#[tokio::test]
async fn hanging_az_is_killed_at_the_timeout() {
    // Scenario: az never answers; after timeout_secs the source gives a timeout error and the process group
    // (shell and az) is gone.
    let az = FakeAz::install(AzBehaviour::Hang).expect("fake az");
    let mut config = az_config();
    config.az_cli.timeout_secs = Some(1);
    let source = SourceRegistry::default()
        .build(&config, &context(&az.path_env()))
        .expect("source");
    let started = Instant::now();

    let error = source.token().await.expect_err("must time out");

    assert_eq!(error.kind(), ErrorKind::AzCliTimeout, "{error}");
    assert!(error.fix().contains("timeout_secs"), "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the timeout did not fire"
    );
    let fake_dir = az.dir().display().to_string();
    let mut still_running = true;
    for _ in 0..50 {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .expect("ps");
        still_running = String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.contains(&fake_dir));
        if !still_running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !still_running,
        "the fake az is still running after the timeout"
    );
}

#[tokio::test]
async fn other_az_failures_pass_on_its_message() {
    // Scenario: az fails for another reason; its message is in the problem, with a way to investigate.
    let az = FakeAz::install(AzBehaviour::Fail("ERROR: AADSTS50076: MFA required".into()))
        .expect("fake az");
    let source = SourceRegistry::default()
        .build(&az_config(), &context(&az.path_env()))
        .expect("source");

    let error = source.token().await.expect_err("must fail");

    assert_eq!(error.kind(), ErrorKind::Upstream, "{error}");
    assert!(error.problem().contains("AADSTS50076"), "{error}");
    assert!(
        error.fix().contains("az account get-access-token"),
        "{error}"
    );
}

#[tokio::test]
async fn zero_timeout_is_a_configuration_error() {
    // Scenario: timeout_secs = 0 cannot work and is refused up front.
    let mut config = az_config();
    config.az_cli.timeout_secs = Some(0);

    let error = SourceRegistry::default()
        .build(&config, &context("/bin"))
        .expect_err("must fail");

    assert!(error.is_configuration());
    assert!(
        error.problem().contains("credential.az_cli.timeout_secs"),
        "{error}"
    );
}

#[test]
fn a_timeout_not_below_the_fetch_deadline_is_refused_naming_both_keys() {
    // Scenario: az's timeout as long as the whole request's deadline could never fire (the fetch deadline
    // would always come first, naming no source and leaving az running): refused up front, naming both keys,
    // both through the source and through the configuration check pgwi runs at start-up.
    let mut config = az_config();
    config.az_cli.timeout_secs = Some(30);

    let error = SourceRegistry::default()
        .build(&config, &context("/bin"))
        .expect_err("must fail");
    let TimingProblem { key, problem, fix } = config.timing_issue().expect("a timing problem");

    assert!(error.is_configuration(), "{error}");
    for text in [error.problem(), problem.as_str()] {
        assert!(
            text.contains("credential.fetch_timeout_secs (30)"),
            "{text}"
        );
    }
    assert!(
        error.problem().contains("credential.az_cli.timeout_secs"),
        "{error}"
    );
    assert_eq!(key, "credential.az_cli.timeout_secs");
    assert!(
        fix.contains("leave credential.az_cli.timeout_secs unset"),
        "{fix}"
    );
}

#[test]
fn an_unset_timeout_is_two_thirds_of_the_fetch_deadline() {
    // Scenario: with timeout_secs unset, az is given two thirds of credential.fetch_timeout_secs, so it is
    // always killed (and named) before the whole request's deadline.
    let mut config = az_config();
    config.fetch_timeout_secs = 45;

    assert_eq!(
        config.cli_timeout(config.az_cli.timeout_secs),
        Duration::from_secs(30)
    );
    assert!(config.timing_issue().is_none());
}
