//! `pgwi run`: the CronJob's job. Connects, applies pending migrations, and writes the original demo's
//! three rows in ONE transaction, idempotently, recording the run in `job_runs`. On SIGTERM the transaction
//! is rolled back and the run is recorded as cancelled.

use std::time::Instant;

use anyhow::Context as _;
use pgwi_core::RotatingPool;
use pgwi_credentials::TokenSource as _;
use sea_orm::sqlx;
use tracing::Instrument as _;

use crate::migration::{Change, migrate_under_lock};

/// The demo's rows.
pub const ROWS: [(&str, i32); 3] = [("banana", 150), ("orange", 154), ("apple", 100)];

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The `job_runs` id.
    pub run_id: i64,
    /// Rows written.
    pub rows_written: i32,
    /// Migrations applied by this run.
    pub migrations_applied: usize,
}

/// Why a run did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// SIGTERM (or another cancellation) arrived: nothing was committed.
    #[error("cancelled before the transaction committed; nothing was written")]
    Cancelled,
    /// Anything else.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Applies pending migrations, then writes the rows. `cancel` resolving stops the run.
///
/// Every step runs after the previous one: with a pool of one connection (what `pgwi run` uses) the whole
/// run — migrations under the lock, the run record, the rows and the outcome — is one physical connection.
pub async fn run(
    db: &RotatingPool,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<RunSummary, RunError> {
    let started = Instant::now();
    // Every step below runs on the pool's one idle connection in turn: one physical connection per run.
    let pending = migrate_under_lock(db.connection(), Change::Up)
        .instrument(tracing::info_span!("migrate"))
        .await
        .context("applying migrations")?;
    if pending > 0 {
        tracing::info!(applied = pending, "migrations applied");
    }
    let credential_kind = db.credential().info().kind;
    let application_name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(db.pool())
        .await
        .context("reading application_name")?;
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO job_runs (credential_kind, application_name) VALUES ($1, $2) RETURNING id",
    )
    .bind(&credential_kind)
    .bind(&application_name)
    .fetch_one(db.pool())
    .await
    .context("recording the run")?;
    tracing::info!(run_id, credential = %credential_kind, "run started");

    let mut conn = db
        .acquire()
        .await
        .context("getting a connection for the transaction")?;
    let backend_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut *conn)
        .await
        .context("reading the backend pid")?;
    let write = write_rows(&mut conn).instrument(tracing::info_span!("write_rows", run_id));
    let outcome = tokio::select! {
        result = write => Some(result),
        () = cancel => None,
    };
    let (status, rows, error, result) = match outcome {
        // The connection goes back to the pool for the outcome's update (with a pool of one, it must).
        Some(Ok(rows)) => {
            drop(conn);
            ("succeeded", rows, None, Ok(rows))
        }
        Some(Err(e)) => {
            drop(conn);
            (
                "failed",
                0,
                Some(format!("{e:#}")),
                Err(RunError::Failed(e)),
            )
        }
        None => {
            // The transaction future was dropped mid-statement. Close its connection outright (returning it
            // to the pool would wait on the statement): the server rolls the transaction back. Cancel the
            // statement too, so a lock wait does not outlive us.
            drop(conn.detach());
            let _ = sqlx::query("SELECT pg_cancel_backend($1)")
                .bind(backend_pid)
                .execute(db.pool())
                .await;
            (
                "cancelled",
                0,
                Some("SIGTERM".to_owned()),
                Err(RunError::Cancelled),
            )
        }
    };
    sqlx::query("UPDATE job_runs SET finished_at = now(), outcome = $2, rows_written = $3, error = $4 WHERE id = $1")
        .bind(run_id)
        .bind(status)
        .bind(rows)
        .bind(error)
        .execute(db.pool())
        .await
        .context("recording the run's outcome")?;
    let rows = result?;
    tracing::info!(
        run_id,
        rows_written = rows,
        migrations_applied = pending,
        credential = %credential_kind,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "run succeeded"
    );
    Ok(RunSummary {
        run_id,
        rows_written: rows,
        migrations_applied: pending,
    })
}

/// Upserts the three rows and removes any other, in one transaction.
async fn write_rows(conn: &mut sqlx::PgConnection) -> anyhow::Result<i32> {
    let mut tx = sqlx::Connection::begin(conn)
        .await
        .context("beginning the transaction")?;
    let mut written = 0;
    for (name, quantity) in ROWS {
        written += sqlx::query(
            "INSERT INTO inventory (name, quantity) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET quantity = EXCLUDED.quantity",
        )
        .bind(name)
        .bind(quantity)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("writing {name}"))?
        .rows_affected() as i32;
    }
    sqlx::query("DELETE FROM inventory WHERE name <> ALL($1)")
        .bind(ROWS.map(|(name, _)| name).to_vec())
        .execute(&mut *tx)
        .await
        .context("removing rows that are not the demo's")?;
    tx.commit().await.context("committing")?;
    Ok(written)
}

/// The inventory as it is now, by name.
pub async fn inventory(db: &RotatingPool) -> anyhow::Result<Vec<(String, i32)>> {
    Ok(
        sqlx::query_as("SELECT name::text, quantity FROM inventory ORDER BY name")
            .fetch_all(db.pool())
            .await?,
    )
}
