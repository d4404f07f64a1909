//! `pgwi run`: the CronJob's job, written as the SeaORM application a user would copy. Applies pending
//! migrations, then upserts the original demo's three rows in ONE transaction (`insert_many` with
//! `on_conflict`), idempotently, recording the run in `job_runs`. On SIGTERM the transaction is rolled back
//! and the run is recorded as cancelled.

use std::time::Instant;

use anyhow::Context as _;
use pgwi_core::RotatingPool;
use pgwi_credentials::TokenSource as _;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::sqlx;
use sea_orm::{
    ActiveModelTrait as _, ColumnTrait as _, ConnectionTrait as _, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait as _, QueryFilter as _, QueryOrder as _,
    Set, Statement, TransactionTrait as _,
};
use tracing::Instrument as _;

use crate::entities::{inventory, job_runs};
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
    tokio::pin!(cancel);
    // Waiting for another job's migration lock can take long: SIGTERM ends the wait (dropping the
    // transaction rolls it back and releases the lock).
    let migrations_applied = tokio::select! {
        applied = migrate_under_lock(db.connection(), Change::Up).instrument(tracing::info_span!("migrate")) => {
            applied.context("applying migrations")?
        }
        () = &mut cancel => return Err(RunError::Cancelled),
    };
    if migrations_applied > 0 {
        tracing::info!(applied = migrations_applied, "migrations applied");
    }
    let credential_kind = db.credential().info().kind;
    let run_id = record_start(db, &credential_kind).await?;
    tracing::info!(run_id, credential = %credential_kind, "run started");
    let outcome = write_unless_cancelled(db, &mut cancel)
        .instrument(tracing::info_span!("write_rows", run_id))
        .await;
    match outcome {
        // The pool's connection may still be busy unwinding the cancelled transaction: record on another.
        Outcome::Cancelled => {
            let side = side_connection(db).await?;
            record_outcome(&side, run_id, &outcome).await?;
            let _ = side.close().await;
        }
        _ => record_outcome(db.connection(), run_id, &outcome).await?,
    }
    let rows_written = outcome.into_result()?;
    // A CronJob is not scraped: its summary line carries the figures /metrics would show.
    let stats = db.rotation_stats();
    tracing::info!(
        run_id,
        rows_written,
        migrations_applied,
        credential = %credential_kind,
        elapsed_ms = started.elapsed().as_millis() as u64,
        token_requests = stats.credential.upstream_fetches,
        token_request_failures = stats.credential.failed_fetches,
        token_expiry_timestamp_seconds = stats.current_expiry.map(|t| t.unix_timestamp()),
        password_rotations = stats.rotations,
        "run succeeded"
    );
    Ok(RunSummary {
        run_id,
        rows_written,
        migrations_applied,
    })
}

/// How the write ended.
enum Outcome {
    Succeeded(i32),
    Failed(anyhow::Error),
    Cancelled,
}

impl Outcome {
    /// `job_runs.outcome`, `rows_written` and `error`.
    fn record(&self) -> (&'static str, i32, Option<String>) {
        match self {
            Outcome::Succeeded(rows) => ("succeeded", *rows, None),
            Outcome::Failed(e) => ("failed", 0, Some(format!("{e:#}"))),
            Outcome::Cancelled => ("cancelled", 0, Some("SIGTERM".into())),
        }
    }

    fn into_result(self) -> Result<i32, RunError> {
        match self {
            Outcome::Succeeded(rows) => Ok(rows),
            Outcome::Failed(e) => Err(RunError::Failed(e)),
            Outcome::Cancelled => Err(RunError::Cancelled),
        }
    }
}

/// Inserts the run's `job_runs` row (`running`) and returns its id.
async fn record_start(db: &RotatingPool, credential_kind: &str) -> anyhow::Result<i64> {
    let application_name = db
        .pool()
        .connect_options()
        .get_application_name()
        .unwrap_or_default()
        .to_owned();
    let run = job_runs::ActiveModel {
        credential_kind: Set(credential_kind.to_owned()),
        application_name: Set(application_name),
        ..Default::default()
    }
    .insert(db.connection())
    .await
    .context("recording the run")?;
    Ok(run.id)
}

/// Completes the run's row with its outcome (the server's clock for `finished_at`).
async fn record_outcome(
    db: &DatabaseConnection,
    run_id: i64,
    outcome: &Outcome,
) -> anyhow::Result<()> {
    let (status, rows, error) = outcome.record();
    job_runs::Entity::update_many()
        .col_expr(job_runs::Column::FinishedAt, Expr::current_timestamp())
        .col_expr(job_runs::Column::Outcome, Expr::value(status))
        .col_expr(job_runs::Column::RowsWritten, Expr::value(rows))
        .col_expr(job_runs::Column::Error, Expr::value(error))
        .filter(job_runs::Column::Id.eq(run_id))
        .exec(db)
        .await
        .context("recording the run's outcome")?;
    Ok(())
}

/// Writes the rows in one transaction, unless `cancel` resolves first: then the transaction is dropped
/// (rolled back) and its statement cancelled on the server, so a lock wait does not outlive the run.
async fn write_unless_cancelled(
    db: &RotatingPool,
    cancel: impl std::future::Future<Output = ()>,
) -> Outcome {
    let txn = match db.connection().begin().await {
        Ok(txn) => txn,
        Err(e) => {
            return Outcome::Failed(anyhow::Error::new(e).context("beginning the transaction"));
        }
    };
    let backend_pid = match backend_pid(&txn).await {
        Ok(pid) => pid,
        Err(e) => return Outcome::Failed(e),
    };
    tokio::select! {
        result = write_rows(txn) => match result {
            Ok(rows) => Outcome::Succeeded(rows),
            Err(e) => Outcome::Failed(e),
        },
        () = cancel => {
            cancel_statement(db, backend_pid).await;
            Outcome::Cancelled
        }
    }
}

async fn backend_pid(txn: &DatabaseTransaction) -> anyhow::Result<i32> {
    let row = txn
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT pg_backend_pid() AS pid",
        ))
        .await
        .context("reading the backend pid")?
        .context("no backend pid")?;
    Ok(row.try_get("", "pid")?)
}

/// A connection of its own with the pool's current options (and so its current token), for the work that
/// must not wait for the pool: cancelling a statement, recording a cancelled run.
async fn side_connection(db: &RotatingPool) -> anyhow::Result<DatabaseConnection> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with((*db.pool().connect_options()).clone())
        .await
        .context("opening a side connection")?;
    Ok(sea_orm::SqlxPostgresConnector::from_sqlx_postgres_pool(
        pool,
    ))
}

/// Cancels what `backend_pid` is running, from a side connection: the pool's may all be busy.
async fn cancel_statement(db: &RotatingPool, backend_pid: i32) {
    let cancelled = async {
        let side = side_connection(db).await?;
        side.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_cancel_backend($1)",
            [backend_pid.into()],
        ))
        .await?;
        side.close().await?;
        anyhow::Ok(())
    };
    if let Err(error) = cancelled.await {
        tracing::warn!(
            error = format!("{error:#}"),
            backend_pid,
            "could not cancel the transaction's statement; the server ends it when the connection closes"
        );
    }
}

/// Upserts the three rows and removes any other, in one transaction: the SeaORM way.
async fn write_rows(txn: DatabaseTransaction) -> anyhow::Result<i32> {
    let rows = ROWS.map(|(name, quantity)| inventory::ActiveModel {
        name: Set(name.to_owned()),
        quantity: Set(quantity),
        ..Default::default()
    });
    let written = inventory::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::column(inventory::Column::Name)
                .update_column(inventory::Column::Quantity)
                .to_owned(),
        )
        .exec_without_returning(&txn)
        .await
        .map_err(explain_write_error)?;
    inventory::Entity::delete_many()
        .filter(inventory::Column::Name.is_not_in(ROWS.map(|(name, _)| name)))
        .exec(&txn)
        .await
        .context("removing rows that are not the demo's")?;
    txn.commit().await.context("committing")?;
    Ok(i32::try_from(written).unwrap_or(i32::MAX))
}

/// The upsert's failure, in words: a missing key on `name` means the table was changed outside pgwi.
fn explain_write_error(error: DbErr) -> anyhow::Error {
    let sqlstate = match &error {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => e
            .as_database_error()
            .and_then(|d| d.code())
            .map(|c| c.into_owned()),
        _ => None,
    };
    if sqlstate.as_deref() == Some("42P10") {
        anyhow::anyhow!(
            "table inventory has no unique key on name, so the rows cannot be upserted: it was re-created \
             outside pgwi (the original demo's job drops and re-creates it without one). Stop that job, then \
             run `pgwi migrate down --steps 2` and `pgwi migrate up` to re-create pgwi's tables (the run \
             history in job_runs is lost)"
        )
    } else {
        anyhow::Error::new(error).context("writing the rows")
    }
}

/// The inventory as it is now, by name.
pub async fn inventory(db: &RotatingPool) -> anyhow::Result<Vec<(String, i32)>> {
    Ok(inventory::Entity::find()
        .order_by_asc(inventory::Column::Name)
        .all(db.connection())
        .await?
        .into_iter()
        .map(|row| (row.name, row.quantity))
        .collect())
}

/// `pgwi run`: connects with a pool of one, runs the job, and stops cleanly on SIGTERM (exit status 1,
/// nothing committed, the run recorded as cancelled).
pub async fn execute(
    sources: &pgwi_core::config::ConfigSources,
) -> anyhow::Result<std::process::ExitCode> {
    // Registered before anything else runs, so that an early SIGTERM is not the default (fatal) action.
    let signal = tokio::spawn(shutdown_signal(terminate_signal()));
    let mut config = pgwi_core::config::load(sources)?.config;
    // The job's steps run one after another: a pool of one makes them share ONE physical connection (with
    // more, a step may open a second while the first is still being returned).
    config.database.max_connections = 1;
    let cancelled = async {
        let _ = signal.await;
    };
    tokio::pin!(cancelled);
    let db = tokio::select! {
        db = pgwi_core::connect(&config) => db?,
        () = &mut cancelled => anyhow::bail!(RunError::Cancelled),
    };
    let result = run(&db, cancelled).await;
    if tokio::time::timeout(std::time::Duration::from_secs(5), db.close())
        .await
        .is_err()
    {
        tracing::warn!("connections did not close within 5 s; exiting anyway");
    }
    result?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// SIGTERM's stream, registered now (Unix).
#[cfg(unix)]
fn terminate_signal() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
}

#[cfg(not(unix))]
fn terminate_signal() -> Option<()> {
    None
}

/// Resolves when SIGTERM (or Ctrl-C) arrives.
#[cfg(unix)]
async fn shutdown_signal(term: Option<tokio::signal::unix::Signal>) {
    let Some(mut term) = term else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::warn!("SIGTERM received: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::warn!("interrupted: stopping"),
    }
}

/// Resolves when Ctrl-C arrives.
#[cfg(not(unix))]
async fn shutdown_signal(_: Option<()>) {
    if tokio::signal::ctrl_c().await.is_ok() {
        tracing::warn!("interrupted: stopping");
    }
}
