//! The schema's migrations (sea-orm-migration), applied in one transaction under a transaction-scoped
//! PostgreSQL advisory lock so that two jobs starting at the same moment do not race.

use sea_orm::{DatabaseConnection, TransactionTrait as _};
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
                 -- Adopting the original demo's table: no NOT NULL, no key on name. Keep the newest row of
                 -- each name and make it fit before adding the key the job upserts on.
                 DELETE FROM inventory WHERE name IS NULL OR quantity IS NULL;
                 DELETE FROM inventory a USING inventory b WHERE a.name = b.name AND a.id < b.id;
                 ALTER TABLE inventory ALTER COLUMN name SET NOT NULL, ALTER COLUMN quantity SET NOT NULL;
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

/// Applies pending migrations in ONE transaction that holds a transaction-scoped advisory lock, on one
/// connection: two jobs starting together take turns, a pool of one connection suffices, and a run that
/// fails or is cancelled rolls back and releases the lock with its transaction — no connection that holds
/// the lock ever returns to the pool. Waiting for the lock is not cut short by `statement_timeout`.
/// Returns how many migrations were applied or rolled back.
pub async fn migrate_under_lock(db: &DatabaseConnection, change: Change) -> Result<usize, DbErr> {
    let txn = db.begin().await?;
    txn.execute_unprepared("SET LOCAL statement_timeout = 0")
        .await?;
    // The lock and the reset in one simple query: one round trip instead of three (a prepared statement
    // costs two). The `SET LOCAL` above stays a message of its own, so no server version times the lock
    // with the old value (before PostgreSQL 13 a timeout covered a whole multi-statement message).
    txn.execute_unprepared(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK}); SET LOCAL statement_timeout TO DEFAULT"
    ))
    .await?;
    let changed = match change {
        Change::Up => {
            let pending = Migrator::get_pending_migrations(&txn).await?.len();
            if pending > 0 {
                Migrator::up(&txn, None).await?;
            }
            pending
        }
        Change::Down(steps) => {
            let applied = Migrator::get_applied_migrations(&txn).await?.len();
            Migrator::down(&txn, Some(steps)).await?;
            applied.min(steps as usize)
        }
    };
    txn.commit().await?;
    Ok(changed)
}

/// What [`migrate_under_lock`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Apply every pending migration.
    Up,
    /// Roll back this many applied migrations.
    Down(u32),
}

/// Name and whether it is applied, for each migration.
pub async fn status(db: &pgwi_core::RotatingPool) -> Result<Vec<(String, bool)>, DbErr> {
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

/// `pgwi migrate`'s actions.
#[derive(Debug, clap::Subcommand)]
pub enum Action {
    /// Apply every pending migration
    Up,
    /// Roll back the most recent migrations
    Down {
        /// How many to roll back
        #[arg(long, default_value_t = 1)]
        steps: u32,
    },
    /// List applied and pending migrations
    Status,
}

/// `pgwi migrate ACTION`.
pub async fn execute(
    sources: &pgwi_core::config::ConfigSources,
    action: Action,
) -> anyhow::Result<std::process::ExitCode> {
    let config = pgwi_core::config::load(sources)?.config;
    let db = pgwi_core::connect(&config).await?;
    match action {
        Action::Up => {
            let applied = migrate_under_lock(db.connection(), Change::Up).await?;
            println!("all migrations applied ({applied} new)");
        }
        Action::Down { steps } => {
            let rolled_back = migrate_under_lock(db.connection(), Change::Down(steps)).await?;
            println!("rolled back {rolled_back} migration(s)");
        }
        Action::Status => {
            for (name, applied) in status(&db).await? {
                println!("{} {name}", if applied { "applied" } else { "pending" });
            }
        }
    }
    db.close().await;
    Ok(std::process::ExitCode::SUCCESS)
}
