//! `pgwi admin bootstrap`: the original's manual SQL, idempotent.

use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::{PasswordAuth, TestDatabase};
use rstest::rstest;
use sea_orm::sqlx;

use crate::support::{Pgwi, assert_success, scram_role, text};

/// An administrator role (CREATEROLE, CREATEDB) on `db` with the pgaadauth stand-in installed.
async fn administrator(db: &TestDatabase) -> pgwi_testsupport::TestRole {
    db.install_pgaadauth_stand_in().await.expect("stand-in");
    let admin = db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("admin role");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE \"{}\" CREATEROLE CREATEDB",
        admin.name
    )))
    .execute(db.admin())
    .await
    .expect("admin rights");
    admin
}

fn bootstrap_command(
    db: &TestDatabase,
    admin: &pgwi_testsupport::TestRole,
    identity: &str,
    app_db: &str,
) -> Pgwi {
    Pgwi::new(&[
        "admin",
        "bootstrap",
        "--identity-name",
        identity,
        "--object-id",
        "0b5d2c47-9a0e-4b6f-8f55-a1b2c3d4e5f6",
        "--app-database",
        app_db,
    ])
    .database(db, &admin.name)
    .env("PGPASSWORD", &admin.password)
}

#[rstest]
#[case::plain("_id", "_app")]
#[case::dash_quote_and_capitals("-My\"Id", "-App\"DB")]
#[tokio::test]
async fn bootstrap_twice_creates_role_database_and_grants_once(
    #[future(awt)] fresh_db: TestDatabase,
    #[case] identity_suffix: &str,
    #[case] database_suffix: &str,
) {
    // Scenario: an administrator (CREATEROLE, CREATEDB) runs bootstrap twice, also for names with `-`, `"`
    // and capitals: the first run creates the principal (through the pgaadauth stand-in), the grant, the
    // database and the schema ownership and finds each privilege held by the owner; the second changes
    // nothing.
    let admin = administrator(&fresh_db).await;
    let identity = format!("{}{identity_suffix}", fresh_db.name());
    let app_db = format!("{}{database_suffix}", fresh_db.name());
    let bootstrap = || bootstrap_command(&fresh_db, &admin, &identity, &app_db);

    let first = bootstrap().output().await;
    let second = bootstrap().output().await;

    assert_success(&first);
    assert_success(&second);
    let (first, second) = (text(&first.stdout), text(&second.stdout));
    // The owner already holds every privilege on its database, so each grant step finds nothing to do.
    assert_eq!(
        first.lines().filter(|l| l.starts_with("created")).count(),
        4,
        "{first}"
    );
    for privilege in ["CONNECT", "CREATE", "TEMPORARY"] {
        assert!(
            first
                .lines()
                .any(|l| l.starts_with("exists") && l.contains(&format!("{privilege} on database"))),
            "{first}"
        );
    }
    assert_eq!(
        second.lines().filter(|l| l.starts_with("exists")).count(),
        7,
        "{second}"
    );
    let (comment, db_owner): (Option<String>, String) = sqlx::query_as(
        "SELECT shobj_description(r.oid, 'pg_authid'), pg_get_userbyid(d.datdba)::text
         FROM pg_roles r, pg_database d WHERE r.rolname = $1 AND d.datname = $2",
    )
    .bind(&identity)
    .bind(&app_db)
    .fetch_one(fresh_db.admin())
    .await
    .expect("role and database");
    assert_eq!(
        comment.as_deref(),
        Some("aad:service:0b5d2c47-9a0e-4b6f-8f55-a1b2c3d4e5f6")
    );
    assert_eq!(db_owner, identity);
    let member: bool = sqlx::query_scalar("SELECT pg_has_role($1, $2, 'MEMBER')")
        .bind(&admin.name)
        .bind(&identity)
        .fetch_one(fresh_db.admin())
        .await
        .expect("membership");
    assert!(member);
}

#[rstest]
#[tokio::test]
async fn bootstrap_without_an_identity_is_a_configuration_error(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: no --identity-name and no admin.identity_name: exit 2 naming both.
    let role = scram_role(&fresh_db).await;

    let output = Pgwi::new(&["admin", "bootstrap"])
        .database(&fresh_db, &role.name)
        .env("PGPASSWORD", &role.password)
        .output()
        .await;

    assert_eq!(output.status.code(), Some(2));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("--identity-name") && stderr.contains("admin.identity_name"),
        "{stderr}"
    );
}

#[rstest]
#[tokio::test]
async fn bootstrap_refuses_a_database_owned_by_another_role(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: the application database already exists with another owner: bootstrap fails with a ✗ that
    // names the owner and the ALTER DATABASE fix, instead of reporting "exists".
    let admin = administrator(&fresh_db).await;
    let identity = format!("{}_id", fresh_db.name());
    let app_db = format!("{}_taken", fresh_db.name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{app_db}\"")))
        .execute(fresh_db.admin())
        .await
        .expect("database with another owner");

    let output = bootstrap_command(&fresh_db, &admin, &identity, &app_db)
        .output()
        .await;

    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("✗") && stderr.contains("owned by") && stderr.contains("ALTER DATABASE"),
        "{stderr}"
    );
}

#[rstest]
#[tokio::test]
async fn bootstrap_refuses_names_longer_than_63_bytes(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: an identity name of 64 bytes would be truncated by PostgreSQL: bootstrap refuses it before
    // touching the server, naming the limit.
    let admin = administrator(&fresh_db).await;
    let long = "a".repeat(64);

    let output = bootstrap_command(&fresh_db, &admin, &long, "whatever")
        .output()
        .await;

    assert_ne!(output.status.code(), Some(0));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("63 bytes"), "{stderr}");
    let created: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
            .bind(&long[..63])
            .fetch_one(fresh_db.admin())
            .await
            .expect("lookup");
    assert!(!created);
}

#[rstest]
#[tokio::test]
async fn bootstrap_grants_each_missing_privilege_on_its_own(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: after a first bootstrap, CREATE is revoked from the application role (CONNECT and TEMPORARY
    // it still holds, through PUBLIC too, so a check of all three at once would say "held"); the next
    // bootstrap grants exactly CREATE again and reports the other two as held.
    let admin = administrator(&fresh_db).await;
    let identity = format!("{}_id", fresh_db.name());
    let app_db = format!("{}_app", fresh_db.name());
    assert_success(
        &bootstrap_command(&fresh_db, &admin, &identity, &app_db)
            .output()
            .await,
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "REVOKE CREATE ON DATABASE \"{app_db}\" FROM \"{identity}\""
    )))
    .execute(fresh_db.admin())
    .await
    .expect("revoke");

    let output = bootstrap_command(&fresh_db, &admin, &identity, &app_db)
        .output()
        .await;

    assert_success(&output);
    let stdout = text(&output.stdout);
    for (privilege, expected) in [
        ("CONNECT", "exists"),
        ("CREATE", "created"),
        ("TEMPORARY", "exists"),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(expected) && l.contains(&format!("{privilege} on database"))),
            "{privilege} should be {expected}: {stdout}"
        );
    }
    let (create, temporary): (bool, bool) = sqlx::query_as(
        "SELECT has_database_privilege($1, $2, 'CREATE'), has_database_privilege($1, $2, 'TEMPORARY')",
    )
    .bind(&identity)
    .bind(&app_db)
    .fetch_one(fresh_db.admin())
    .await
    .expect("privileges");
    assert!(create && temporary);
}
