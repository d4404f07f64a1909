//! Token roles: the test server judges Entra-style tokens as Azure Database for PostgreSQL does — any unexpired,
//! correctly signed token for the role, with the right audience, is accepted; anything else is refused (run
//! with each backend: `PGWI_TEST_POSTGRES=container|native`, native as root).

use std::time::Duration;

use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, POSTGRES_SCOPE};
use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::jwt::{self, POSTGRES_AUDIENCE, sign_compact, unix_now};
use pgwi_testsupport::{PasswordAuth, TOKEN_GROUP, TestDatabase, TokenCheck};
use rstest::rstest;
use sea_orm::sqlx::postgres::PgSslMode;
use sea_orm::sqlx::{self, Connection as _, Row as _};
use serde_json::json;

/// Connects and returns (current_user, ssl in use) as the server sees them.
async fn whoami(options: &sqlx::postgres::PgConnectOptions) -> Result<(String, bool), sqlx::Error> {
    let mut conn = sqlx::PgConnection::connect_with(options).await?;
    let row =
        sqlx::query("SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Asserts that `error` is PostgreSQL refusing a token: PAM failures are SQLSTATE 28000
/// (invalid_authorization_specification), not 28P01 as for wrong passwords.
fn assert_refused_by_pam(error: &sqlx::Error) {
    let code = error
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.into_owned());
    assert_eq!(code.as_deref(), Some("28000"), "{error}");
    assert!(
        error.to_string().contains("PAM authentication failed"),
        "{error}"
    );
}

/// A token role unique to this test.
async fn token_role(db: &TestDatabase, suffix: &str) -> String {
    let name = format!("{}_{suffix}", db.name());
    db.create_token_role(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    name
}

/// A token for `user` the way Entra names a managed identity, expiring at `exp`, signed with `key`.
fn token_for(user: &str, exp: i64, key: &[u8]) -> String {
    sign_compact(
        &json!({
            "aud": POSTGRES_AUDIENCE,
            "iat": unix_now(),
            "exp": exp,
            "jti": pgwi_testsupport::random_alphanumeric(8),
            "xms_mirid": format!(
                "/subscriptions/0/resourcegroups/rg/providers/Microsoft.ManagedIdentity/userAssignedIdentities/{user}"
            ),
        }),
        key,
    )
}

/// The server's checks of `user`'s tokens so far.
fn checks_of(db: &TestDatabase, user: &str) -> Vec<TokenCheck> {
    db.server()
        .token_checks()
        .expect("token checks")
        .into_iter()
        .filter(|check| check.user == user)
        .collect()
}

#[rstest]
#[tokio::test]
async fn a_valid_token_logs_in_over_verify_full_tls(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: a token role logs in with an unexpired token for it, signed with the server's key, over TLS
    // verified against the run's CA; the role is in the token group and has no password of its own.
    let role = token_role(&fresh_db, "app").await;
    let key = fresh_db.server().token_signing_key();
    let token = token_for(&role, unix_now() + 600, key);
    let options = fresh_db.connect_options(&role, &token);
    assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));

    let (user, ssl) = whoami(&options).await.expect("log in with the token");

    assert_eq!(user, role);
    assert!(ssl, "the session must be encrypted");
    assert_eq!(key.len(), 32);
    let (member, has_password): (bool, bool) = sqlx::query_as(
        "SELECT pg_has_role($1, $2, 'MEMBER'), rolpassword IS NOT NULL FROM pg_authid WHERE rolname = $1",
    )
    .bind(&role)
    .bind(TOKEN_GROUP)
    .fetch_one(fresh_db.admin())
    .await
    .expect("role facts");
    assert!(member && !has_password);
    pgwi_testsupport::postgres::announce_served(
        fresh_db.server(),
        &format!("token login of {role} (pam + checker) over TLS with verify-full succeeded"),
    );
}

#[rstest]
#[tokio::test]
async fn the_same_token_is_refused_once_expired(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: a token issued with a 2 s lifetime logs in; once its exp has passed, the very same token is
    // refused and the check says it expired — while a session opened before keeps working.
    let role = token_role(&fresh_db, "short").await;
    let exp = unix_now() + 2;
    let token = token_for(&role, exp, fresh_db.server().token_signing_key());
    let options = fresh_db.connect_options(&role, &token);
    let mut held = sqlx::PgConnection::connect_with(&options)
        .await
        .expect("log in before expiry");

    while unix_now() <= exp {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let error = whoami(&options)
        .await
        .expect_err("an expired token must be refused");

    assert_refused_by_pam(&error);
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut held)
        .await
        .expect("the session opened before expiry");
    assert_eq!(one, 1);
    let checks = checks_of(&fresh_db, &role);
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert!(checks[0].accepted && checks[0].reason.starts_with("valid until"));
    assert!(!checks[1].accepted && checks[1].reason.starts_with("expired at"));
    assert_eq!(checks[1].expires_at, Some(exp));
}

/// What is wrong with a refused token.
#[derive(Debug, Clone, Copy)]
enum Flaw {
    WrongSignature,
    WrongAudience,
    AnotherRolesToken,
    AlreadyExpired,
    AlgNone,
    NotAJwt,
}

#[rstest]
#[case::wrong_signature(Flaw::WrongSignature, "bad signature")]
#[case::wrong_audience(Flaw::WrongAudience, "wrong audience https://management.azure.com")]
#[case::another_roles_token(Flaw::AnotherRolesToken, "token is for ")]
#[case::already_expired(Flaw::AlreadyExpired, "expired at")]
#[case::alg_none(Flaw::AlgNone, "unsupported alg none")]
#[case::not_a_jwt(Flaw::NotAJwt, "malformed")]
#[tokio::test]
async fn a_flawed_token_is_refused_with_its_reason(
    #[case] flaw: Flaw,
    #[case] reason: &str,
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: a token with one flaw (signature, audience, identity, expiry, algorithm, shape) is refused, and
    // the server's check names the flaw.
    let role = token_role(&fresh_db, "app").await;
    let other = token_role(&fresh_db, "other").await;
    let key = fresh_db.server().token_signing_key();
    let later = unix_now() + 600;
    let token = match flaw {
        Flaw::WrongSignature => token_for(&role, later, b"not the server's key"),
        Flaw::WrongAudience => sign_compact(
            &json!({"aud": "https://management.azure.com", "exp": later, "upn": role}),
            key,
        ),
        Flaw::AnotherRolesToken => token_for(&other, later, key),
        Flaw::AlreadyExpired => token_for(&role, unix_now() - 1, key),
        Flaw::AlgNone => {
            let signed = token_for(&role, later, key);
            let (_, rest) = signed.split_once('.').expect("three parts");
            let header = "eyJhbGciOiJub25lIn0"; // {"alg":"none"}
            format!("{header}.{rest}")
        }
        Flaw::NotAJwt => "definitely-not-a-token".to_owned(),
    };

    let error = whoami(&fresh_db.connect_options(&role, &token))
        .await
        .expect_err("a flawed token must be refused");

    assert_refused_by_pam(&error);
    let checks = checks_of(&fresh_db, &role);
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert!(!checks[0].accepted);
    assert!(
        checks[0].reason.starts_with(reason),
        "{flaw:?}: {:?}",
        checks[0]
    );
    // The other role's token still works for the other role: only the pairing was wrong.
    if let Flaw::AnotherRolesToken = flaw {
        assert!(
            checks[0].reason.contains(&other),
            "the reason names the token's identity: {:?}",
            checks[0]
        );
        whoami(&fresh_db.connect_options(&other, &token))
            .await
            .expect("the token logs in as the role it is for");
    }
}

#[rstest]
#[tokio::test]
async fn two_unexpired_tokens_for_the_same_role_both_log_in(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: Azure's model, unlike "the password is the latest token": after a second token is issued for
    // the role, the first still opens new connections until it expires, and so does the second.
    let role = token_role(&fresh_db, "app").await;
    let key = fresh_db.server().token_signing_key();
    let first = token_for(&role, unix_now() + 600, key);
    let second = token_for(&role, unix_now() + 900, key);
    assert_ne!(first, second);

    for token in [&first, &second, &first] {
        let (user, _) = whoami(&fresh_db.connect_options(&role, token))
            .await
            .expect("every unexpired token for the role logs in");
        assert_eq!(user, role);
    }

    let checks = checks_of(&fresh_db, &role);
    assert_eq!(checks.len(), 3, "{checks:?}");
    assert!(checks.iter().all(|c| c.accepted));
}

/// Asks the stand-in for a token over HTTPS, as workload identity does.
async fn request_token(entra: &EntraStandIn, assertion: &str) -> String {
    let options = entra.options();
    let encode = |value: &str| -> String {
        value
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let body = [
        ("client_id", options.client_id.as_str()),
        ("grant_type", "client_credentials"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion),
        ("scope", POSTGRES_SCOPE),
    ]
    .iter()
    .map(|(name, value)| format!("{name}={}", encode(value)))
    .collect::<Vec<_>>()
    .join("&");
    let ca = reqwest::Certificate::from_pem(entra.ca_pem().as_bytes()).expect("CA");
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("client");
    let response = client
        .post(format!(
            "{}{}/oauth2/v2.0/token",
            entra.authority_host(),
            options.tenant_id
        ))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("token request")
        .bytes()
        .await
        .expect("token response");
    let response: serde_json::Value = serde_json::from_slice(&response).expect("JSON");
    response["access_token"]
        .as_str()
        .unwrap_or_else(|| panic!("no access_token in {response}"))
        .to_owned()
}

#[rstest]
#[tokio::test]
async fn tokens_from_the_entra_stand_in_log_in(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: the Entra stand-in set up for the server (EntraOptions::for_server) issues compact tokens that
    // fit PAM's limit and differ even within one second; each logs in as the identity's token role.
    let mut options = EntraOptions::for_server("projected-sa-token", fresh_db.server());
    options.identity_name = format!("{}_wi", fresh_db.name());
    fresh_db
        .create_token_role(&options.identity_name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let identity = options.identity_name.clone();
    let entra = EntraStandIn::start(options).await.expect("entra");

    let first = request_token(&entra, "projected-sa-token").await;
    let second = request_token(&entra, "projected-sa-token").await;

    assert_ne!(first, second);
    for token in [&first, &second] {
        assert!(
            token.len() <= jwt::MAX_CHECKABLE_TOKEN_LEN,
            "{}",
            token.len()
        );
        let (user, ssl) = whoami(&fresh_db.connect_options(&identity, token))
            .await
            .expect("the stand-in's token logs in");
        assert_eq!(user, identity);
        assert!(ssl);
    }
    assert_eq!(entra.issued_tokens(), vec![first, second]);
}

#[rstest]
#[tokio::test]
async fn token_checks_record_verdicts_and_reasons_but_never_the_token(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: after one accepted and one refused login, token_checks() lists both for the role, oldest
    // first, with time, exp, verdict and reason; neither the tokens nor their signatures appear in any check
    // or its Debug output.
    let role = token_role(&fresh_db, "audit").await;
    let key = fresh_db.server().token_signing_key();
    let exp = unix_now() + 600;
    let good = token_for(&role, exp, key);
    let forged = token_for(&role, exp, b"forged");
    let before = unix_now();

    whoami(&fresh_db.connect_options(&role, &good))
        .await
        .expect("good token");
    whoami(&fresh_db.connect_options(&role, &forged))
        .await
        .expect_err("forged token");

    let checks = checks_of(&fresh_db, &role);
    assert_eq!(checks.len(), 2, "{checks:?}");
    let (accepted, refused) = (&checks[0], &checks[1]);
    assert!(accepted.accepted && accepted.reason == format!("valid until {exp}"));
    assert!(!refused.accepted && refused.reason == "bad signature");
    for check in &checks {
        assert_eq!(check.expires_at, Some(exp));
        assert!(check.checked_at >= before && check.checked_at <= unix_now());
        let shown = format!("{check:?} {}", check.reason);
        for token in [&good, &forged] {
            let signature = token.rsplit('.').next().expect("signature");
            assert!(!shown.contains(token.as_str()) && !shown.contains(signature));
        }
    }
}

#[rstest]
#[case::scram(PasswordAuth::Scram)]
#[case::cleartext(PasswordAuth::Cleartext)]
#[tokio::test]
async fn a_password_role_granted_a_token_role_keeps_its_password(
    #[case] auth: PasswordAuth,
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: an administrator made a member of an Entra principal's role (`GRANT identity TO admin`, as
    // bootstrap does) still logs in with its password, not through the token checker — as on Azure.
    let identity = token_role(&fresh_db, "id").await;
    let admin = fresh_db.create_role(auth).await.expect("password role");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "GRANT \"{identity}\" TO \"{}\"",
        admin.name
    )))
    .execute(fresh_db.admin())
    .await
    .expect("grant");

    let (user, _) = whoami(&fresh_db.connect_options(&admin.name, &admin.password))
        .await
        .expect("the password still logs in");

    assert_eq!(user, admin.name);
    assert!(checks_of(&fresh_db, &admin.name).is_empty());
}
