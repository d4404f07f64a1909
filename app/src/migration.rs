//! The schema's migrations (sea-orm-migration), applied under a PostgreSQL advisory lock so that two jobs
//! starting at the same moment do not race.

use sea_orm::sqlx;
use sea_orm_migration::prelude::*;

/// All migrations, oldest first.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(CreateInventory), Box::new(CreateJobRuns)]
    }
}

/// The original demo's table. Kept compatible: an existing `inventory` is adopted, not dropped.
struct CreateInventory;

impl MigrationName for CreateInventory {
    fn name(&self) -> &str {
        "m20261128_000001_create_inventory"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateInventory {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS inventory (
                     id serial PRIMARY KEY,
                     name varchar(50) NOT NULL,
                     quantity integer NOT NULL
                 );
                 CREATE UNIQUE INDEX IF NOT EXISTS inventory_name_key ON inventory (name);",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS inventory")
            .await
            .map(|_| ())
    }
}

/// One row per `pgwi run`.
struct CreateJobRuns;

impl MigrationName for CreateJobRuns {
    fn name(&self) -> &str {
        "m20261128_000002_create_job_runs"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateJobRuns {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS job_runs (
                     id bigserial PRIMARY KEY,
                     started_at timestamptz NOT NULL DEFAULT now(),
                     finished_at timestamptz,
                     outcome text NOT NULL DEFAULT 'running'
                         CHECK (outcome IN ('running', 'succeeded', 'failed', 'cancelled')),
                     rows_written integer NOT NULL DEFAULT 0,
                     credential_kind text NOT NULL,
                     application_name text NOT NULL,
                     error text
                 );",
            )
            .await
            .map(|_| ())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP TABLE IF EXISTS job_runs")
            .await
            .map(|_| ())
    }
}

/// Key of the advisory lock that serialises migrations ("pgwi" in ASCII).
const MIGRATION_LOCK: i64 = 0x7067_7769;

/// Runs `work` while holding the migration lock on one of the pool's connections.
pub async fn with_migration_lock<T, F>(db: &pgwi_core::Database, work: F) -> Result<T, DbErr>
where
    F: std::future::Future<Output = Result<T, DbErr>>,
{
    let mut lock_conn = db
        .pool()
        .acquire()
        .await
        .map_err(|e| DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e.into())))?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *lock_conn)
        .await
        .map_err(|e| DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e.into())))?;
    let result = work.await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *lock_conn)
        .await;
    result
}

/// Name and whether it is applied, for each migration.
pub async fn status(db: &pgwi_core::Database) -> Result<Vec<(String, bool)>, DbErr> {
    let all = Migrator::get_migration_with_status(db.connection()).await?;
    Ok(all
        .iter()
        .map(|m| {
            (
                m.name().to_owned(),
                m.status() == sea_orm_migration::MigrationStatus::Applied,
            )
        })
        .collect())
}
