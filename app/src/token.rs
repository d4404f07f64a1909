//! `pgwi token`: get a token from the configured source and show what a person needs — never the token,
//! unless `--raw` asks for it alone (for `PGPASSWORD=$(pgwi token --raw) psql ...`).

use std::fmt::Write as _;

use pgwi_credentials::{Token, TokenSource};
use time::OffsetDateTime;

/// The human-readable description of `token` from `source`. Contains no secret.
pub fn describe(source: &dyn TokenSource, token: &Token, configured_user: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "source:    {}", source.info());
    match token.expires_at() {
        Some(expiry) => {
            let left = expiry - OffsetDateTime::now_utc();
            let _ = writeln!(
                out,
                "expires:   {} (in {}m {}s)",
                expiry
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| expiry.to_string()),
                left.whole_minutes(),
                left.whole_seconds() % 60
            );
        }
        None => {
            let _ = writeln!(out, "expires:   never (a static password)");
        }
    }
    match token.claims() {
        Some(claims) => {
            if let Some(name) = claims.database_user() {
                let _ = writeln!(
                    out,
                    "identity:  {name}  <- the database user must be this name"
                );
            }
            for (label, claim) in [
                ("oid", "oid"),
                ("appid", "appid"),
                ("upn", "upn"),
                ("audience", "aud"),
                ("tenant", "tid"),
                ("issuer", "iss"),
            ] {
                if let Some(value) = claims.get(claim) {
                    let _ = writeln!(out, "{label:<10} {value}");
                }
            }
            if let (Some(user), Some(name)) = (configured_user, claims.database_user())
                && user != "auto"
                && user != name
            {
                let _ = writeln!(
                    out,
                    "warning:   database.user is {user:?} but the token is for {name:?}: Azure will refuse the login"
                );
            }
        }
        None => {
            let _ = writeln!(out, "claims:    none (not a JWT)");
        }
    }
    out
}

/// `pgwi token [--raw]`: gets a token from the configured source; prints it only with `--raw`.
pub async fn execute(
    sources: &pgwi_core::config::ConfigSources,
    raw: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let loaded = pgwi_core::config::load_unchecked(sources)?.config;
    let source = pgwi_credentials::SourceRegistry::default().build(
        &loaded.credential,
        &pgwi_credentials::SourceContext::default(),
    )?;
    let token = source.token().await?;
    if raw {
        println!("{}", token.secret().expose());
    } else {
        print!(
            "{}",
            describe(source.as_ref(), &token, loaded.database.user.as_deref())
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}
