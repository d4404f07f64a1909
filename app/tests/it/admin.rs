//! `pgwi admin bootstrap`: the original's manual SQL, idempotent.

use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::{PasswordAuth, TestDatabase};
use rstest::rstest;
use sea_orm::sqlx;

use crate::support::{Pgwi, assert_success, text};

#[rstest]
#[tokio::test]
async fn bootstrap_twice_creates_role_database_and_grants_once(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: an administrator (CREATEROLE, CREATEDB) runs bootstrap twice: the first run creates the
    // principal (through the pgaadauth stand-in), the grant, the database and the schema ownership; the
    // second run changes nothing.
    fresh_db
        .install_pgaadauth_stand_in()
        .await
        .expect("stand-in");
    let admin = fresh_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("admin role");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "ALTER ROLE \"{}\" CREATEROLE CREATEDB",
        admin.name
    )))
    .execute(fresh_db.admin())
    .await
    .expect("admin rights");
    let identity = format!("{}_id", fresh_db.name());
    let app_db = format!("{}_app", fresh_db.name());
    let bootstrap = || {
        Pgwi::new(&[
            "admin",
            "bootstrap",
            "--identity-name",
            &identity,
            "--object-id",
            "0b5d2c47-9a0e-4b6f-8f55-a1b2c3d4e5f6",
            "--app-database",
            &app_db,
        ])
        .database(&fresh_db, &admin.name)
        .env("PGPASSWORD", &admin.password)
    };

    let first = bootstrap().output().await;
    let second = bootstrap().output().await;

    assert_success(&first);
    assert_success(&second);
    let (first, second) = (text(&first.stdout), text(&second.stdout));
    // The owner already holds every privilege on its database, so the grant step finds nothing to do.
    assert_eq!(
        first.lines().filter(|l| l.starts_with("created")).count(),
        4,
        "{first}"
    );
    assert!(
        first
            .lines()
            .any(|l| l.starts_with("exists") && l.contains("all privileges")),
        "{first}"
    );
    assert_eq!(
        second.lines().filter(|l| l.starts_with("exists")).count(),
        5,
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
    let role = fresh_db
        .create_role(PasswordAuth::Scram)
        .await
        .expect("role");

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
