//! A small axum service that keeps a passwordless SeaORM connection for as long as it runs: what a Rust
//! service using pgwi-core looks like.
//!
//! ```sh
//! PGWI_DATABASE__HOST=myserver.postgres.database.azure.com PGWI_DATABASE__NAME=app \
//! PGWI_DATABASE__USER=my-identity PGWI_CREDENTIAL__KIND=workload-identity \
//! cargo run -p pgwi-core --example service
//! curl -i http://127.0.0.1:8080/healthz
//! curl http://127.0.0.1:8080/metrics
//! ```
//!
//! Configuration comes from pgwi's loader (`pgwi.toml` and its profile via `PGWI_PROFILE`, then `PGWI_*`
//! variables); it listens on `PGWI_EXAMPLE_ADDR` (default `127.0.0.1:8080`). `GET /healthz` runs a query
//! through the pool and answers 200, or 503 with the reason, within 2 s; `GET /metrics` serves pgwi's
//! numbers (tokens, the pool) in Prometheus' text format, from the recorder installed first. The state holds
//! only the SeaORM connection and the recorder's handle: the password rotation lives in the pool under it.

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use pgwi_core::config::{self, ConfigSources};
use sea_orm::{ConnectionTrait as _, DatabaseConnection};

/// How long `/healthz` waits for the database. Without a bound, a server that does not answer holds the
/// probe for the pool's whole acquire timeout (`database.connect_timeout_secs`, 30 s), past any probe's.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

async fn healthz(
    State((db, _)): State<(DatabaseConnection, PrometheusHandle)>,
) -> (StatusCode, String) {
    match tokio::time::timeout(HEALTH_TIMEOUT, db.execute_unprepared("SELECT 1")).await {
        Ok(Ok(_)) => (StatusCode::OK, "ok\n".into()),
        Ok(Err(error)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the database did not answer within {HEALTH_TIMEOUT:?}\n"),
        ),
    }
}

async fn metrics(State((_, recorder)): State<(DatabaseConnection, PrometheusHandle)>) -> String {
    recorder.render()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx::postgres::notice=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    // Before connecting, so that the first token request is counted too.
    let recorder = PrometheusBuilder::new().install_recorder()?;
    pgwi_core::metrics::describe();

    let config = config::load(&ConfigSources::default())?.config;
    let db = pgwi_core::connect(&config).await?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state((db.connection().clone(), recorder));

    let addr = std::env::var("PGWI_EXAMPLE_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(%addr, "listening; GET /healthz, GET /metrics");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    db.close().await;
    Ok(())
}
