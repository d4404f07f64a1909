//! Tests of the real-PostgreSQL bench (run them with each backend: `PGWI_TEST_POSTGRES=container|native`).

use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::postgres::Requested;
use pgwi_testsupport::{Backend, PasswordAuth, TestCertificates, TestDatabase};
use rstest::rstest;
use sea_orm::sqlx::postgres::PgSslMode;
use sea_orm::sqlx::{self, Connection as _, Row as _};

/// Connects and returns (current_user, ssl in use) as the server sees them.
async fn whoami(options: &sqlx::postgres::PgConnectOptions) -> Result<(String, bool), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect_with(options).await?;
    let row =
        sqlx::query("SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned())
}

#[rstest]
#[case::scram(PasswordAuth::Scram)]
#[case::cleartext_like_azure(PasswordAuth::Cleartext)]
#[tokio::test]
async fn role_logs_in_with_its_password_over_verify_full_tls(
    #[case] auth: PasswordAuth,
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: a role made by the bench logs in with its password, over TLS verified against the run's CA.
    let role = fresh_db.create_role(auth).await.expect("create role");
    let options = fresh_db.connect_options(&role.name, &role.password);
    assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));

    let (user, ssl) = whoami(&options).await.expect("log in");

    assert_eq!(user, role.name);
    assert!(ssl, "the session must be encrypted");
    pgwi_testsupport::postgres::announce_served(
        fresh_db.server(),
        &format!(
            "{auth:?} login of {} over TLS with verify-full succeeded",
            role.name
        ),
    );
}

#[rstest]
#[case::scram(PasswordAuth::Scram)]
#[case::cleartext(PasswordAuth::Cleartext)]
#[tokio::test]
async fn wrong_password_is_refused(
    #[case] auth: PasswordAuth,
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: the right user with a wrong password gets 28P01 (invalid_password), not a session.
    let role = fresh_db.create_role(auth).await.expect("create role");

    let error = whoami(&fresh_db.connect_options(&role.name, "not-the-password"))
        .await
        .expect_err("a wrong password must be refused");

    assert_eq!(sqlstate(&error).as_deref(), Some("28P01"), "{error}");
}

#[rstest]
#[tokio::test]
async fn connection_without_tls_is_refused(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: with the right password but TLS off, pg_hba.conf rejects the connection (28000).
    let role = fresh_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("create role");
    let plaintext = fresh_db
        .connect_options(&role.name, &role.password)
        .ssl_mode(PgSslMode::Disable);

    let error = whoami(&plaintext)
        .await
        .expect_err("plaintext must be refused");

    assert_eq!(sqlstate(&error).as_deref(), Some("28000"), "{error}");
    assert!(error.to_string().contains("no encryption"), "{error}");
}

#[rstest]
#[tokio::test]
async fn certificate_from_another_ca_is_not_trusted(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: verify-full with a CA that did not sign the server certificate fails the handshake.
    let role = fresh_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("create role");
    let stranger = TestCertificates::generate().expect("another CA");
    let options = fresh_db
        .connect_options(&role.name, &role.password)
        .ssl_root_cert_from_pem(stranger.ca_pem.into_bytes());

    let error = whoami(&options)
        .await
        .expect_err("an untrusted certificate must fail");

    // sqlx reports rustls's verdict either as a TLS error or as an I/O error of kind InvalidData.
    let rejected_certificate = match &error {
        sqlx::Error::Tls(_) => true,
        sqlx::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    };
    assert!(
        rejected_certificate,
        "expected a certificate rejection, got {error:?}"
    );
    assert!(
        format!("{error:?}").contains("InvalidCertificate"),
        "{error:?}"
    );
}

#[rstest]
#[tokio::test]
async fn each_test_gets_its_own_database(
    #[future(awt)] fresh_db: TestDatabase,
    #[future(awt)]
    #[from(fresh_db)]
    other_db: TestDatabase,
) {
    // Scenario: two fresh databases are distinct; a table made in one is absent from the other.
    assert_ne!(fresh_db.name(), other_db.name());
    sqlx::query("CREATE TABLE only_here (id int)")
        .execute(fresh_db.admin())
        .await
        .expect("create table");

    let found: i64 =
        sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE tablename = 'only_here'")
            .fetch_one(other_db.admin())
            .await
            .expect("query other database");

    assert_eq!(found, 0);
}

#[rstest]
#[tokio::test]
async fn changed_password_applies_to_new_logins_only(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: after ALTER ROLE ... PASSWORD, an open session keeps working, the old password no longer
    // logs in, and the new one does (what token rotation relies on).
    let role = fresh_db
        .create_role(PasswordAuth::Cleartext)
        .await
        .expect("create role");
    let old = fresh_db.connect_options(&role.name, &role.password);
    let mut held = sqlx::PgConnection::connect_with(&old)
        .await
        .expect("log in");

    fresh_db
        .set_password(&role.name, "rotated-password")
        .await
        .expect("rotate");

    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut held)
        .await
        .expect("held session");
    assert_eq!(one, 1);
    let error = whoami(&old).await.expect_err("old password must fail");
    assert_eq!(sqlstate(&error).as_deref(), Some("28P01"));
    let (user, _) = whoami(&fresh_db.connect_options(&role.name, "rotated-password"))
        .await
        .expect("new password logs in");
    assert_eq!(user, role.name);
}

#[test]
fn backend_variable_is_parsed_strictly() {
    // Scenario: PGWI_TEST_POSTGRES accepts the four documented values, and anything else is one clear error
    // naming the variable and the choices.
    assert_eq!(Requested::parse(None).unwrap(), Requested::Auto);
    assert_eq!(Requested::parse(Some("")).unwrap(), Requested::Auto);
    assert_eq!(
        Requested::parse(Some("native")).unwrap(),
        Requested::Only(Backend::Native)
    );
    assert_eq!(
        Requested::parse(Some("container")).unwrap(),
        Requested::Only(Backend::Container)
    );
    assert_eq!(
        Requested::parse(Some("external")).unwrap(),
        Requested::Only(Backend::External)
    );

    let message = Requested::parse(Some("docker")).unwrap_err().to_string();

    assert!(
        message.contains("PGWI_TEST_POSTGRES=\"docker\""),
        "{message}"
    );
    assert!(
        message.contains("auto, container, native, external"),
        "{message}"
    );
}
