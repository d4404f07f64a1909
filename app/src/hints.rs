//! What only the `pgwi` binary can add to a library error: its own commands and flags. pgwi-core's messages
//! name configuration keys and SQLSTATEs; where `pgwi admin bootstrap`, `pgwi doctor` or a flag is the fix,
//! it is said here, once, where errors are printed.

use pgwi_core::{ConfigError, ConnectError};

/// The hint for the first cause in `error` that one of pgwi's commands or flags fixes.
pub fn for_error(error: &anyhow::Error) -> Option<&'static str> {
    error.chain().find_map(for_cause)
}

/// The hint for this one error, if one of pgwi's commands or flags fixes it.
pub fn for_cause(cause: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    if let Some(code) = crate::cli::sqlstate_in(cause) {
        return for_sqlstate(&code);
    }
    if let Some(ConnectError::Authentication(_)) = cause.downcast_ref::<ConnectError>() {
        return Some(
            "`pgwi admin bootstrap` creates the role for the identity; `pgwi doctor` checks each step",
        );
    }
    cause.downcast_ref::<ConfigError>().and_then(for_config)
}

/// The binary's fix for a server error, by SQLSTATE.
fn for_sqlstate(code: &str) -> Option<&'static str> {
    match code {
        "3D000" => Some("`pgwi admin bootstrap` creates the database with the right owner"),
        "42501" => Some(
            "`pgwi admin bootstrap` grants CONNECT, CREATE and TEMPORARY on the database and CREATE on \
             schema public",
        ),
        _ => None,
    }
}

fn for_config(error: &ConfigError) -> Option<&'static str> {
    match error {
        ConfigError::NotFound(_) => Some("--config names the file and --profile the profile"),
        ConfigError::Rejected { key, problem, .. } if problem == "is not set" => match key.as_str()
        {
            "database.host" => Some("--host sets it too"),
            "database.name" => Some("--database sets it too"),
            "database.user" => Some("--user sets it too"),
            _ => None,
        },
        _ => None,
    }
}
