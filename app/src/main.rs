//! `pgwi`: parse arguments, set up logging, run the command, map errors to exit statuses
//! (0 success, 2 configuration error, 1 runtime failure).

use std::process::ExitCode;

use clap::Parser as _;
use pgwi::cli::{Cli, dispatch, exit_status};
use pgwi::telemetry::{self, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // PostgreSQL notices such as "relation ... already exists, skipping" are not news.
    telemetry::init("info,sqlx::postgres::notice=warn", LogFormat::detect());
    pgwi_credentials::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(error) => {
            let status = exit_status(&error);
            tracing::error!(
                error = format!("{error:#}"),
                exit_status = status,
                "pgwi failed"
            );
            eprintln!("error: {error:#}");
            ExitCode::from(status)
        }
    }
}
