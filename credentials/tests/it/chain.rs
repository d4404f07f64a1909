//! `auto`: the ordered chain picks the first source that works in the environment, says why, skips sources
//! that cannot work here, stops at one that was meant to work and failed, and lists every source's reason
//! when none works.

use pgwi_credentials::{
    ChainOutcome, CredentialConfig, ErrorKind, SourceContext, SourceRegistry, TokenSource as _,
};
use pgwi_testsupport::az::{AzBehaviour, FakeAz, FakeTool};
use pgwi_testsupport::entra::{ClientSecret, EntraOptions, EntraStandIn};
use pgwi_testsupport::jwt;
use pgwi_testsupport::managed_identity::{ManagedIdentityOptions, ManagedIdentityStandIn};

use crate::support::{test_context, test_env};

fn outcomes(chain: &pgwi_credentials::ChainSource) -> Vec<(String, &'static str)> {
    chain
        .steps()
        .into_iter()
        .map(|step| {
            let outcome = match step.outcome {
                ChainOutcome::Present { .. } => "present",
                ChainOutcome::Chosen { .. } => "chosen",
                ChainOutcome::Skipped { .. } => "skipped",
                ChainOutcome::Failed { .. } => "failed",
                ChainOutcome::NotTried => "not tried",
                ChainOutcome::Trying { .. } => "trying",
            };
            (step.kind, outcome)
        })
        .collect()
}

fn expected(pairs: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
    pairs.iter().map(|(k, o)| ((*k).to_owned(), *o)).collect()
}

#[tokio::test]
async fn a_service_principal_in_the_environment_comes_before_managed_identity() {
    // Scenario: a CI runner on an Azure VM with AZURE_CLIENT_SECRET set: the environment's service principal
    // is chosen (as DefaultAzureCredential does), the static password is skipped for want of PGPASSWORD, and
    // the later sources are not even asked.
    let secret = ClientSecret::generate(false);
    let mut options = EntraOptions::new("unused");
    options.client_secrets = vec![secret.clone()];
    let entra = EntraStandIn::start(options).await.expect("Entra");
    let imds = ManagedIdentityStandIn::start(ManagedIdentityOptions::new("vm", vec![1; 32]))
        .await
        .expect("IMDS");
    let mut env = entra.service_principal_environment();
    env.push(("AZURE_CLIENT_SECRET".into(), secret.value.clone()));
    env.push((
        "AZURE_POD_IDENTITY_AUTHORITY_HOST".into(),
        imds.imds_endpoint(),
    ));
    let ctx = SourceContext {
        env: test_env(env),
        azure_client_options: Some(entra.azure_client_options().expect("options")),
    };

    let chain = SourceRegistry::default()
        .build_chain(&CredentialConfig::default(), &ctx)
        .expect("chain");
    chain.token().await.expect("token");

    assert_eq!(chain.info().kind, "client-secret");
    assert!(
        chain
            .info()
            .detail("chosen_by")
            .is_some_and(|w| w.contains("AZURE_CLIENT_SECRET")),
        "{}",
        chain.info()
    );
    assert_eq!(
        outcomes(&chain),
        expected(&[
            ("static-password", "skipped"),
            ("client-secret", "chosen"),
            ("client-certificate", "skipped"),
            ("workload-identity", "skipped"),
            ("managed-identity", "not tried"),
            ("az-cli", "skipped"),
            ("azure-developer-cli", "skipped"),
        ])
    );
    assert!(imds.requests().is_empty());
}

#[tokio::test]
async fn on_a_vm_managed_identity_is_chosen_through_imds() {
    // Scenario: nothing but the VM's metadata service: managed identity is chosen, and the token is its.
    let imds = ManagedIdentityStandIn::start(ManagedIdentityOptions::new("vm", vec![1; 32]))
        .await
        .expect("IMDS");
    let ctx = test_context([("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.imds_endpoint())]);

    let chain = SourceRegistry::default()
        .build_chain(&CredentialConfig::default(), &ctx)
        .expect("chain");
    let token = chain.token().await.expect("token");

    assert_eq!(chain.info().kind, "managed-identity");
    assert_eq!(
        imds.issued_tokens(),
        vec![token.secret().expose().to_owned()]
    );
}

#[tokio::test]
async fn on_a_laptop_imds_is_skipped_and_az_is_chosen() {
    // Scenario: a developer's machine: no metadata service answers, so managed identity is skipped with
    // the reason, and the developer's az login gives the token; the choice is logged once with the skips.
    let az = FakeAz::install(AzBehaviour::Token {
        access_token: "az-chain-token-0123456789".into(),
        expires_on: jwt::unix_now() + 3600,
    })
    .expect("fake az");
    let ctx = test_context([("PATH", az.path_env())]);
    let logs = pgwi_testsupport::logs::LogCapture::start();

    let chain = SourceRegistry::default()
        .build_chain(&CredentialConfig::default(), &ctx)
        .expect("chain");
    chain.token().await.expect("token");
    chain.token().await.expect("the chosen source again");

    assert_eq!(chain.info().kind, "az-cli");
    let steps = chain.steps();
    let managed = steps
        .iter()
        .find(|s| s.kind == "managed-identity")
        .expect("managed identity step");
    assert!(
        matches!(&managed.outcome, ChainOutcome::Skipped { reason } if reason.contains("IMDS at http://127.0.0.1:9")),
        "{managed:?}"
    );
    let logged = logs.contents();
    assert_eq!(
        logged
            .matches("credential.kind = auto chose az-cli")
            .count(),
        1,
        "{logged}"
    );
    assert!(
        logged.contains("managed-identity (no managed identity endpoint here"),
        "{logged}"
    );
}

#[tokio::test]
async fn when_nothing_works_one_error_lists_every_source() {
    // Scenario: no password, no service principal, no pod, no IMDS, no az or azd: one configuration error
    // naming every source of the chain and what it lacks.
    let ctx = test_context([("PATH", "/nonexistent-pgwi-bin")]);

    let chain = SourceRegistry::default()
        .build_chain(&CredentialConfig::default(), &ctx)
        .expect("managed identity can only be ruled out by asking");
    let error = chain.token().await.expect_err("nothing works");

    assert!(error.is_configuration(), "{error}");
    for reason in [
        "static-password: PGPASSWORD is not set",
        "client-secret: AZURE_CLIENT_SECRET is not set",
        "client-certificate: AZURE_CLIENT_CERTIFICATE_PATH is not set",
        "workload-identity: AZURE_FEDERATED_TOKEN_FILE is not set",
        "managed-identity: no managed identity endpoint here",
        "az-cli: az is not on PATH",
        "azure-developer-cli: azd is not on PATH",
    ] {
        assert!(
            error.problem().contains(reason),
            "{reason} missing from: {error}"
        );
    }
}

#[tokio::test]
async fn a_source_that_was_meant_to_work_stops_the_chain_with_its_error() {
    // Scenario: a service principal whose secret expired, on a machine where az would work: the chain
    // stops at client-secret with AADSTS7000222 rather than silently using the developer's login.
    let secret = ClientSecret::generate(true);
    let mut options = EntraOptions::new("unused");
    options.client_secrets = vec![secret.clone()];
    let entra = EntraStandIn::start(options).await.expect("Entra");
    let az = FakeAz::install(AzBehaviour::Token {
        access_token: "az-should-not-be-used-0123".into(),
        expires_on: jwt::unix_now() + 3600,
    })
    .expect("fake az");
    let mut env = entra.service_principal_environment();
    env.push(("AZURE_CLIENT_SECRET".into(), secret.value.clone()));
    env.push(("PATH".into(), az.path_env()));
    let ctx = SourceContext {
        env: test_env(env),
        azure_client_options: Some(entra.azure_client_options().expect("options")),
    };

    let chain = SourceRegistry::default()
        .build_chain(&CredentialConfig::default(), &ctx)
        .expect("chain");
    let error = chain.token().await.expect_err("expired secret");

    assert_eq!(error.code(), Some("7000222"), "{error}");
    assert_eq!(error.kind(), ErrorKind::Entra);
    assert!(
        error
            .problem()
            .contains("skipped static-password before it"),
        "{error}"
    );
    assert!(az.calls().is_empty(), "az must not be asked");
    assert!(outcomes(&chain).contains(&("az-cli".to_owned(), "not tried")));
}

#[tokio::test]
async fn credential_chain_sets_the_order() {
    // Scenario: credential.chain = [az-cli, static-password] with both available: az comes first.
    let az = FakeAz::install(AzBehaviour::Token {
        access_token: "az-ordered-token-0123456".into(),
        expires_on: jwt::unix_now() + 3600,
    })
    .expect("fake az");
    let config = CredentialConfig {
        chain: Some(vec!["az-cli".into(), "static-password".into()]),
        ..CredentialConfig::default()
    };
    let ctx = test_context([
        ("PATH", az.path_env()),
        ("PGPASSWORD", "pw-also-here".into()),
    ]);

    let chain = SourceRegistry::default()
        .build_chain(&config, &ctx)
        .expect("chain");
    chain.token().await.expect("token");

    assert_eq!(chain.kinds(), ["az-cli", "static-password"]);
    assert_eq!(chain.info().kind, "az-cli");
}

#[test]
fn an_unknown_kind_in_the_chain_is_a_configuration_error_naming_it() {
    // Scenario: a typo in credential.chain is refused at build time, naming the kind, even when
    // credential.kind names a source explicitly.
    for kind in ["auto", "static-password"] {
        let config = CredentialConfig {
            kind: kind.into(),
            chain: Some(vec!["managed_identity".into()]),
            ..CredentialConfig::default()
        };

        let error = SourceRegistry::default()
            .build(&config, &test_context([("PGPASSWORD", "pw")]))
            .expect_err("unknown kind");

        assert!(error.is_configuration());
        assert!(error.problem().contains("\"managed_identity\""), "{error}");
        assert!(error.fix().contains("managed-identity"), "{error}");
    }
}

/// Whether a process whose command line mentions `dir` still runs, after waiting up to five seconds for it
/// to go (a killed process may take a moment to disappear from `ps`).
async fn still_running(dir: &std::path::Path) -> bool {
    let dir = dir.display().to_string();
    for _ in 0..50 {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .expect("ps");
        if !String::from_utf8_lossy(&ps.stdout)
            .lines()
            .any(|l| l.contains(&dir))
        {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    true
}

#[tokio::test]
async fn a_hanging_az_inside_auto_fails_by_name_and_is_killed() {
    // Scenario: auto reaches az-cli, whose az never answers: the error names az-cli (not just "auto"),
    // doctor's steps show az-cli as the one that failed and the earlier sources as skipped, and the fake
    // az's processes are gone afterwards.
    let az = FakeAz::install(AzBehaviour::Hang).expect("fake az");
    let config = CredentialConfig {
        fetch_timeout_secs: 3,
        refresh_margin_secs: 300,
        ..CredentialConfig::default()
    };
    let ctx = test_context([("PATH", az.path_env())]);
    let cached = SourceRegistry::default()
        .build_cached(&config, &ctx)
        .expect("cached chain");

    let error = cached.token().await.expect_err("az hangs");

    assert_eq!(error.source_name(), "az-cli", "{error}");
    assert!(
        error
            .problem()
            .contains("did not answer within 2s and was killed"),
        "{error}"
    );
    assert!(
        error.problem().contains("auto skipped"),
        "the chain's context is kept: {error}"
    );
    assert!(!az.calls().is_empty(), "az was asked");
    assert!(
        !still_running(az.dir()).await,
        "the fake az is still running after the chain gave up"
    );
}

/// A kind an application registered whose source takes its time and then says it cannot work here.
#[derive(Debug)]
struct SlowUnavailable;

impl pgwi_credentials::SourceKind for SlowUnavailable {
    const NAME: &'static str = "slow";
    type Config = serde::de::IgnoredAny;

    fn build(
        &self,
        _config: &Self::Config,
        _credential: &CredentialConfig,
        _ctx: &SourceContext,
    ) -> Result<std::sync::Arc<dyn pgwi_credentials::TokenSource>, pgwi_credentials::CredentialError>
    {
        Ok(std::sync::Arc::new(SlowUnavailable))
    }

    fn presence(
        &self,
        _config: &Self::Config,
        _credential: &CredentialConfig,
        _ctx: &SourceContext,
    ) -> Result<String, String> {
        Ok("always worth a try".into())
    }
}

#[async_trait::async_trait]
impl pgwi_credentials::TokenSource for SlowUnavailable {
    async fn token(&self) -> Result<pgwi_credentials::Token, pgwi_credentials::CredentialError> {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        Err(pgwi_credentials::CredentialError::new(
            ErrorKind::Unavailable,
            "slow",
            "not here",
            "none",
        ))
    }

    fn info(&self) -> pgwi_credentials::SourceInfo {
        pgwi_credentials::SourceInfo::new("slow")
    }
}

#[tokio::test]
async fn the_chain_deadline_names_the_source_it_cut_short_and_kills_its_az() {
    // Scenario: a slow source comes before az-cli, so az's own timeout (2s) would end after the chain's
    // deadline (just inside fetch_timeout_secs = 3): the chain's deadline fires while az runs, the error
    // names az-cli, the steps record it as the one that failed, and dropping its request killed az.
    let az = FakeAz::install(AzBehaviour::Hang).expect("fake az");
    let mut config = CredentialConfig {
        chain: Some(vec!["slow".into(), "az-cli".into()]),
        fetch_timeout_secs: 3,
        ..CredentialConfig::default()
    };
    config.az_cli.timeout_secs = Some(2);
    let mut registry = SourceRegistry::default();
    registry.register(SlowUnavailable);
    let ctx = test_context([("PATH", az.path_env())]);
    let chain = registry.build_chain(&config, &ctx).expect("chain");

    let error = chain.token().await.expect_err("az hangs");

    assert_eq!(error.source_name(), "az-cli", "{error}");
    assert_eq!(error.kind(), ErrorKind::Timeout, "{error}");
    assert!(
        error.problem().contains("credential.fetch_timeout_secs"),
        "{error}"
    );
    assert_eq!(
        outcomes(&chain),
        expected(&[("slow", "skipped"), ("az-cli", "failed")])
    );
    assert!(!az.calls().is_empty(), "az was asked");
    assert!(
        !still_running(az.dir()).await,
        "the fake az is still running after the chain gave up"
    );
}

/// A `PATH` with both fakes first.
fn path_with(az: &FakeAz, azd: &FakeAz) -> String {
    format!(
        "{}:{}:/usr/bin:/bin",
        az.dir().display(),
        azd.dir().display()
    )
}

#[tokio::test]
async fn az_not_logged_in_falls_through_to_azd() {
    // Scenario: a developer's machine with az installed but not logged in, and azd logged in: az-cli is
    // skipped with "not logged in" and azd's token is used.
    let az = FakeAz::install(AzBehaviour::NotLoggedIn).expect("fake az");
    let azd = FakeAz::install_tool(
        FakeTool::Azd,
        AzBehaviour::Token {
            access_token: "azd-chain-token-0123456789".into(),
            expires_on: jwt::unix_now() + 3600,
        },
    )
    .expect("fake azd");
    let ctx = test_context([("PATH", path_with(&az, &azd))]);

    let chain = SourceRegistry::default()
        .build_chain(&CredentialConfig::default(), &ctx)
        .expect("chain");
    let token = chain.token().await.expect("token");

    assert_eq!(token.secret().expose(), "azd-chain-token-0123456789");
    assert_eq!(chain.info().kind, "azure-developer-cli");
    let az_step = chain
        .steps()
        .into_iter()
        .find(|s| s.kind == "az-cli")
        .expect("az-cli step");
    assert!(
        matches!(&az_step.outcome, ChainOutcome::Skipped { reason } if reason.contains("not logged in")),
        "{az_step:?}"
    );
    assert_eq!(az.calls().len(), 1);
}

#[tokio::test]
async fn the_chosen_source_stays_chosen_when_it_later_fails() {
    // Scenario: az-cli was chosen; then az is logged out while azd would work. The next request asks az
    // alone and fails with az's error: the chain does not re-resolve and quietly switch to azd.
    let az = FakeAz::install(AzBehaviour::Token {
        access_token: "az-pinned-token-0123456789".into(),
        expires_on: jwt::unix_now() + 3600,
    })
    .expect("fake az");
    let azd = FakeAz::install_tool(
        FakeTool::Azd,
        AzBehaviour::Token {
            access_token: "azd-unused-token-012345678".into(),
            expires_on: jwt::unix_now() + 3600,
        },
    )
    .expect("fake azd");
    let ctx = test_context([("PATH", path_with(&az, &azd))]);
    let chain = SourceRegistry::default()
        .build_chain(&CredentialConfig::default(), &ctx)
        .expect("chain");
    chain.token().await.expect("token");

    az.set(AzBehaviour::NotLoggedIn).expect("log az out");
    let error = chain.token().await.expect_err("az is logged out");

    assert_eq!(error.source_name(), "az-cli", "{error}");
    assert_eq!(error.kind(), ErrorKind::AzCliNotLoggedIn, "{error}");
    assert!(azd.calls().is_empty(), "azd must never be asked");
    assert_eq!(chain.info().kind, "az-cli");
}

#[tokio::test]
async fn a_wrong_user_assigned_identity_on_imds_stops_the_chain() {
    // Scenario: a VM where AZURE_CLIENT_ID names an identity the VM does not have, and a developer's az
    // would work: the chain stops at managed-identity with the error naming AZURE_CLIENT_ID, and az is
    // never asked (falling through would hide the mistake).
    let imds = ManagedIdentityStandIn::start(ManagedIdentityOptions::new("vm", vec![1; 32]))
        .await
        .expect("IMDS");
    let az = FakeAz::install(AzBehaviour::Token {
        access_token: "az-should-not-be-used-4567".into(),
        expires_on: jwt::unix_now() + 3600,
    })
    .expect("fake az");
    let ctx = test_context([
        ("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds.imds_endpoint()),
        (
            "AZURE_CLIENT_ID",
            "00000000-0000-0000-0000-00000000dead".into(),
        ),
        ("PATH", az.path_env()),
    ]);

    let chain = SourceRegistry::default()
        .build_chain(&CredentialConfig::default(), &ctx)
        .expect("chain");
    let error = chain.token().await.expect_err("wrong identity");

    assert_eq!(error.source_name(), "managed-identity", "{error}");
    assert!(error.is_configuration(), "{error}");
    assert!(error.problem().contains("AZURE_CLIENT_ID"), "{error}");
    assert!(az.calls().is_empty(), "az must not be asked");
    assert!(outcomes(&chain).contains(&("az-cli".to_owned(), "not tried")));
}
