//! `pgwi`: parse arguments, set up logging, run the command, map errors to exit statuses
//! (0 success, 2 configuration error, 1 runtime failure).

use std::process::ExitCode;

use clap::Parser as _;
use pgwi::cli::{Cli, describe_error, dispatch, exit_status};
use pgwi::telemetry::{self, LogFormat};

/// Panic messages go through the token redaction too: a panicking token source must not print a token.
fn redact_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "pgwi panicked{location}: {}",
            pgwi_credentials::redact_tokens(message)
        );
    }));
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // PostgreSQL notices such as "relation ... already exists, skipping" are not news.
    telemetry::init(cli.default_log_filter(), LogFormat::detect());
    redact_panics();
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
            let description = describe_error(&error);
            tracing::error!(error = %description, exit_status = status, "pgwi failed");
            eprintln!("error: {description}");
            ExitCode::from(status)
        }
    }
}
