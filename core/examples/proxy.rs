//! The proxy server embedded in a Rust program: what `pgwi proxy` does, in a few lines.
//!
//! ```sh
//! PGWI_DATABASE__HOST=myserver.postgres.database.azure.com PGWI_DATABASE__NAME=app \
//! PGWI_DATABASE__USER=my-identity PGWI_CREDENTIAL__KIND=workload-identity \
//! PGWI_EXAMPLE_LISTEN=127.0.0.1:6432 cargo run -p pgwi-core --example proxy
//! psql -h 127.0.0.1 -p 6432 -U my-identity app
//! ```
//!
//! Configuration comes from pgwi's loader (`pgwi.toml` and its profile via `PGWI_PROFILE`, then `PGWI_*`
//! variables); it listens on `PGWI_EXAMPLE_LISTEN` (default `127.0.0.1:6432`, loopback: no local password
//! needed) and stops on SIGTERM or Ctrl-C, letting open sessions finish for 30 s.

use pgwi_core::config::{self, ConfigSources};
use pgwi_core::proxy::Proxy;
use pgwi_core::proxy::server::{Listen, ProxyServer};
use pgwi_credentials::{SourceContext, SourceRegistry};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    let loaded = config::load(&ConfigSources::default())?;
    let credential = SourceRegistry::default()
        .build_cached(&loaded.config.credential, &SourceContext::default())?;
    let proxy = Proxy::start(&loaded.config, credential).await?;
    let listen = std::env::var("PGWI_EXAMPLE_LISTEN").unwrap_or_else(|_| "127.0.0.1:6432".into());
    let server = ProxyServer::new(proxy)
        .listen(Listen::Tcp(listen.parse()?))
        .bind()
        .await?;
    server.serve(stop_requested(), std::future::pending()).await;
    Ok(())
}

/// SIGTERM (Kubernetes, systemd) or Ctrl-C.
async fn stop_requested() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
