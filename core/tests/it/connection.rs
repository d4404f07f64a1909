//! Connecting to the test bench: the demo's variables, TLS per sslmode, per-connection settings, and the
//! errors for wrong passwords, untrusted certificates and unreachable servers.

use std::sync::Arc;

use pgwi_core::config::{ConfigSources, SslMode};
use pgwi_core::{ConnectError, connect_with};
use pgwi_credentials::{CacheOptions, CachedTokenSource, CredentialConfig, SourceRegistry};
use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::{PasswordAuth, TestCertificates, TestDatabase};
use rstest::rstest;
use sea_orm::sqlx;

use crate::support::{config_for, static_password};

#[rstest]
#[tokio::test]
async fn the_demo_variables_alone_connect(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: DBHOST (host:port), DBNAME, DBUSER, SSL_MODE=require and PGPASSWORD — the original
    // CronJob's environment — are all pgwi needs to connect and query.
    let role = fresh_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("role");
    let mut loaded = None;
    figment::Jail::expect_with(|jail| {
        jail.set_env("DBHOST", format!("127.0.0.1:{}", fresh_db.server().port()));
        jail.set_env("DBNAME", fresh_db.name());
        jail.set_env("DBUSER", &role.name);
        jail.set_env("SSL_MODE", "require");
        loaded = Some(
            pgwi_core::config::load(&ConfigSources {
                demo_variables: true,
                ..ConfigSources::default()
            })
            .map_err(|e| e.to_string())?,
        );
        Ok(())
    });
    let config = loaded.expect("config").config;

    let db = connect_with(&config, static_password(&role.password))
        .await
        .expect("connect");
    let (user, ssl): (String, bool) = sqlx::query_as(
        "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    )
    .fetch_one(db.pool())
    .await
    .expect("query");

    assert_eq!(user, role.name);
    assert!(ssl);
    db.close().await;
}

#[rstest]
#[tokio::test]
async fn application_name_and_statement_timeout_apply_to_every_connection(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: the configured application_name and statement_timeout are set on each new connection.
    let role = fresh_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("role");
    let mut config = config_for(&fresh_db, &role.name);
    config.database.application_name = "pgwi-test".into();
    config.database.statement_timeout_secs = 7;
    config.database.max_connections = 2;
    let db = connect_with(&config, static_password(&role.password))
        .await
        .expect("connect");

    let mut first = db.acquire().await.expect("first");
    let mut second = db.acquire().await.expect("second");
    for conn in [&mut first, &mut second] {
        let (name, timeout): (String, String) = sqlx::query_as(
            "SELECT current_setting('application_name'), current_setting('statement_timeout')",
        )
        .fetch_one(&mut **conn)
        .await
        .expect("settings");
        assert_eq!((name.as_str(), timeout.as_str()), ("pgwi-test", "7s"));
    }
    drop((first, second));
    db.close().await;
}

#[rstest]
#[tokio::test]
async fn a_wrong_password_is_one_clear_authentication_error(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: 28P01 is not retried; the error lists the likely causes and never the password.
    let role = fresh_db
        .create_role(PasswordAuth::Cleartext)
        .await
        .expect("role");
    let config = config_for(&fresh_db, &role.name);

    let error = connect_with(&config, static_password("wrong-password-value"))
        .await
        .expect_err("refused");

    let message = error.to_string();
    assert!(
        matches!(error, ConnectError::Authentication(ref failure) if failure.code == "28P01"),
        "{error:?}"
    );
    assert!(message.contains("managed identity's NAME"), "{message}");
    assert!(
        message.contains("pgaadauth_create_principal_with_oid"),
        "{message}"
    );
    assert!(
        !message.contains("wrong-password-value")
            && !format!("{error:?}").contains("wrong-password-value")
    );
    assert!(!error.is_configuration());
}

#[rstest]
#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_error(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: verify-full with a CA that did not sign the server's certificate fails with a TLS error
    // pointing at ssl_root_cert.
    let role = fresh_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("role");
    let dir = tempfile::tempdir().expect("dir");
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, TestCertificates::generate().expect("CA").ca_pem).expect("write");
    let mut config = config_for(&fresh_db, &role.name);
    config.database.ssl_root_cert = Some(other_ca);

    let error = connect_with(&config, static_password(&role.password))
        .await
        .expect_err("untrusted");

    assert!(
        matches!(
            error,
            ConnectError::Tls {
                sslmode: SslMode::VerifyFull,
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("ssl_root_cert"), "{error}");
}

#[rstest]
#[tokio::test]
async fn an_unreachable_server_is_retried_then_reported(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: nothing listens on the port; pgwi retries within connect_timeout_secs, then says where it
    // tried and what to check.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let mut config = config_for(&fresh_db, "nobody");
    config.database.port = port;
    config.database.connect_timeout_secs = 2;

    let error = connect_with(&config, static_password("pw"))
        .await
        .expect_err("unreachable");

    assert!(
        matches!(error, ConnectError::Unreachable { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "{error}"
    );
}

#[rstest]
#[tokio::test]
async fn a_bad_credential_fails_before_any_connection(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: the first token is fetched before the pool is built, so an unset password variable fails
    // fast with the credential's error.
    let config = config_for(&fresh_db, "whoever");
    let credential_config = CredentialConfig {
        kind: "static-password".into(),
        ..CredentialConfig::default()
    };
    let ctx = pgwi_credentials::SourceContext {
        env: pgwi_credentials::Environment::from_pairs(Vec::<(String, String)>::new()),
        ..Default::default()
    };
    let source = SourceRegistry::default()
        .build(&credential_config, &ctx)
        .expect("source");

    let error = connect_with(
        &config,
        Arc::new(CachedTokenSource::new(source, CacheOptions::default())),
    )
    .await
    .expect_err("no password");

    assert!(matches!(error, ConnectError::Credential(_)), "{error:?}");
    assert!(error.to_string().contains("PGPASSWORD"), "{error}");
}

#[rstest]
#[tokio::test]
async fn a_socket_directory_as_host_connects_over_the_unix_socket(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: database.host names the server's socket directory (as libpq's host=/dir does) while
    // sslmode stays verify-full: pgwi connects over the Unix socket without TLS (PostgreSQL offers none
    // there), authenticates with scram, and the server sees a socket client (no client address).
    let role = fresh_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("role");
    let (dir, port) = fresh_db
        .server()
        .unix_socket()
        .expect("the bench's servers share their socket directory");
    let mut config = config_for(&fresh_db, &role.name);
    config.database.host = Some(dir.display().to_string());
    config.database.port = port;

    let db = connect_with(&config, static_password(&role.password))
        .await
        .expect("connect over the socket");
    let (client_addr, ssl): (Option<String>, bool) = sqlx::query_as(
        "SELECT client_addr::text, ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.pid = pg_backend_pid()",
    )
    .fetch_one(db.pool())
    .await
    .expect("query");

    assert_eq!(client_addr, None, "a Unix-socket client has no address");
    assert!(!ssl);
    db.close().await;
}

#[rstest]
#[tokio::test]
async fn a_configuration_built_in_code_is_checked_like_a_loaded_one(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: an application builds its Config in code with sslmode=disable towards a remote host and
    // connects through Connector: the same check as the loader refuses it before any token or connection.
    let _ = fresh_db;
    let mut config = pgwi_core::Config::for_server("db.example.com", 5432, "app", "app-identity");
    config.database.sslmode = SslMode::Disable;

    let error = pgwi_core::Connector::new(&config)
        .source(static_password("unused-password"))
        .connect()
        .await
        .expect_err("refused");

    assert!(matches!(error, ConnectError::Config(_)), "{error:?}");
    assert!(error.to_string().contains("database.sslmode"), "{error}");
    assert!(error.is_configuration());
}
