//! No secret leaves: not in logs at TRACE, not in any error's Display or Debug, not in a source's Debug.

use pgwi_credentials::{CredentialConfig, SourceContext, SourceRegistry, TokenSource as _};
use pgwi_testsupport::az::{AzBehaviour, FakeAz};
use pgwi_testsupport::entra::Fault;
use pgwi_testsupport::jwt;
use pgwi_testsupport::logs::LogCapture;

use crate::support::Pod;

#[tokio::test]
async fn no_token_password_or_service_account_token_reaches_logs_errors_or_debug() {
    // Scenario: every source runs, succeeding and failing, with all logs captured at TRACE; none of the
    // issued tokens, the service-account token, az's token or the passwords appears anywhere.
    let logs = LogCapture::start();
    let mut seen = Vec::new();
    let registry = SourceRegistry::default();

    // Workload identity: a success, then AADSTS70021 and a malformed answer.
    let pod = Pod::start().await;
    let wi = registry
        .build_cached(&pod.config(), &pod.context())
        .expect("wi source");
    let wi_token = wi.token().await.expect("wi token");
    seen.push(format!("{wi:?} {wi_token:?} {:?}", wi.stats()));
    pod.entra.push_fault(Fault::Aadsts(
        70021,
        "No matching federated identity record.".into(),
    ));
    pod.entra.push_fault(Fault::Malformed);
    for _ in 0..2 {
        let uncached = registry
            .build(&pod.config(), &pod.context())
            .expect("wi source");
        let error = uncached.token().await.expect_err("must fail");
        seen.push(format!("{error} {error:?} {uncached:?}"));
    }

    // az: a success and a failure.
    let az_token = "az-secret-token-0123456789";
    let az = FakeAz::install(AzBehaviour::Token {
        access_token: az_token.into(),
        expires_on: jwt::unix_now() + 3600,
    })
    .expect("fake az");
    let az_config = CredentialConfig {
        kind: "az-cli".into(),
        ..CredentialConfig::default()
    };
    let az_ctx = SourceContext {
        env: crate::support::test_env([("PATH", az.path_env())]),
        ..SourceContext::default()
    };
    let az_source = registry
        .build_cached(&az_config, &az_ctx)
        .expect("az source");
    let token = az_source.token().await.expect("az token");
    seen.push(format!("{az_source:?} {token:?}"));
    az.set(AzBehaviour::NotLoggedIn).expect("az");
    let error = registry
        .build(&az_config, &az_ctx)
        .expect("az")
        .token()
        .await
        .expect_err("not logged in");
    seen.push(format!("{error} {error:?}"));

    // Static password: variable, and inline (whose config Debug must not show it either).
    let password = "static-secret-password-42";
    let mut sp_config = CredentialConfig {
        kind: "static-password".into(),
        ..CredentialConfig::default()
    };
    let sp_ctx = SourceContext {
        env: crate::support::test_env([("PGPASSWORD", password)]),
        ..SourceContext::default()
    };
    let sp = registry.build_cached(&sp_config, &sp_ctx).expect("sp");
    let token = sp.token().await.expect("sp token");
    seen.push(format!("{sp:?} {token:?}"));
    sp_config.static_password.password = Some(password.to_owned().into());
    let inline = registry.build(&sp_config, &sp_ctx).expect("inline");
    seen.push(format!(
        "{sp_config:?} {inline:?} {:?}",
        inline.token().await.expect("inline token")
    ));

    let captured = logs.contents();
    let mut secrets: Vec<String> = pod.entra.issued_tokens();
    secrets.extend([
        pod.sa_token.clone(),
        az_token.to_owned(),
        password.to_owned(),
    ]);
    assert!(secrets.len() >= 4);
    assert!(
        captured.contains("token fetched"),
        "the capture must have seen the sources at work:\n{captured}"
    );
    for secret in &secrets {
        assert!(
            !captured.contains(secret.as_str()),
            "a secret reached the logs:\n{captured}"
        );
        for text in &seen {
            assert!(
                !text.contains(secret.as_str()),
                "a secret reached Display/Debug: {text}"
            );
        }
        // JWTs: their signature part alone must not leak either.
        if let Some(signature) = secret.rsplit('.').next().filter(|s| s.len() > 20) {
            assert!(
                !captured.contains(signature),
                "a token signature reached the logs"
            );
        }
    }
}

#[test]
fn secrets_in_configuration_never_serialize_or_debug() {
    // Scenario: a configuration with an inline static password and a registered source's table holding an
    // api key: neither value appears in its Debug output nor in its serialized form.
    let mut config = pgwi_credentials::CredentialConfig::default();
    config.static_password.password = Some(pgwi_credentials::SecretString::new("inline-pw-4711"));
    config.custom.insert(
        "vault".into(),
        serde_json::json!({ "api_key": "vault-key-0815" }),
    );

    let debug = format!("{config:?}");
    let serialized = serde_json::to_string(&config).expect("serialize");

    for text in [&debug, &serialized] {
        assert!(!text.contains("inline-pw-4711"), "{text}");
    }
    assert!(!debug.contains("vault-key-0815"), "{debug}");
    assert!(debug.contains("vault"), "the key stays visible: {debug}");
    assert!(
        serialized.contains(pgwi_credentials::REDACTED),
        "{serialized}"
    );
}
