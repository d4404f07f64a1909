//! The static-password source: a variable, a re-read file, or inline configuration.

use pgwi_credentials::{
    CredentialConfig, ErrorKind, SecretString, SourceContext, SourceRegistry, TokenSource as _,
};

fn config() -> CredentialConfig {
    CredentialConfig {
        kind: "static-password".into(),
        ..CredentialConfig::default()
    }
}

fn env(pairs: &[(&str, &str)]) -> SourceContext {
    SourceContext {
        env: crate::support::test_env(pairs.iter().copied()),
        ..SourceContext::default()
    }
}

#[tokio::test]
async fn password_comes_from_pgpassword_by_default() {
    // Scenario: with no keys set, the password is PGPASSWORD's value and never expires.
    let source = SourceRegistry::default()
        .build(&config(), &env(&[("PGPASSWORD", "s3cret")]))
        .expect("source");

    let token = source.token().await.expect("token");

    assert_eq!(token.secret().expose(), "s3cret");
    assert_eq!(token.expires_at(), None);
    assert_eq!(source.info().detail("variable"), Some("PGPASSWORD"));
}

#[tokio::test]
async fn another_variable_can_be_named() {
    // Scenario: password_env names the variable; an unset one is an error naming it.
    let mut config = config();
    config.static_password.password_env = "APP_DB_PASSWORD".into();
    let registry = SourceRegistry::default();

    let token = registry
        .build(&config, &env(&[("APP_DB_PASSWORD", "from-app-var")]))
        .expect("source")
        .token()
        .await
        .expect("token");
    let error = registry
        .build(&config, &env(&[]))
        .expect("source")
        .token()
        .await
        .expect_err("unset");

    assert_eq!(token.secret().expose(), "from-app-var");
    assert_eq!(error.kind(), ErrorKind::MissingInput);
    assert!(error.problem().contains("APP_DB_PASSWORD"), "{error}");
}

#[tokio::test]
async fn password_file_is_re_read_for_every_connection() {
    // Scenario: a rotated Kubernetes Secret file takes effect on the next call, trailing newline trimmed.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("password");
    std::fs::write(&file, "first\n").expect("write");
    let mut config = config();
    config.static_password.password_file = Some(file.clone());
    let source = SourceRegistry::default()
        .build_cached(&config, &env(&[]))
        .expect("source");

    let first = source.token().await.expect("first");
    std::fs::write(&file, "second\n").expect("rotate");
    let second = source.token().await.expect("second");

    assert_eq!(first.secret().expose(), "first");
    assert_eq!(second.secret().expose(), "second");
}

#[tokio::test]
async fn a_missing_or_empty_password_file_names_the_path() {
    // Scenario: the file is absent, then empty; each error names the file.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("password");
    let mut config = config();
    config.static_password.password_file = Some(file.clone());
    let source = SourceRegistry::default()
        .build(&config, &env(&[]))
        .expect("source");

    let missing = source.token().await.expect_err("missing");
    std::fs::write(&file, "\n").expect("write");
    let empty = source.token().await.expect_err("empty");

    assert!(
        missing.problem().contains(&file.display().to_string()),
        "{missing}"
    );
    assert!(
        empty.problem().contains(&file.display().to_string()),
        "{empty}"
    );
}

#[tokio::test]
async fn inline_password_works_and_both_inline_and_file_is_refused() {
    // Scenario: an inline password is used; setting both inline and file is a configuration error.
    let mut config = config();
    config.static_password.password = Some(SecretString::new("inline-pw"));

    let token = SourceRegistry::default()
        .build(&config, &env(&[]))
        .expect("source")
        .token()
        .await
        .expect("token");
    config.static_password.password_file = Some("/run/secrets/pw".into());
    let error = SourceRegistry::default()
        .build(&config, &env(&[]))
        .expect_err("ambiguous");

    assert_eq!(token.secret().expose(), "inline-pw");
    assert!(error.is_configuration());
    assert!(error.problem().contains("password_file"), "{error}");
}
