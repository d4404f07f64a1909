//! `pgwi doctor`: walks the whole chain — configuration, the credential's inputs, a token, DNS, TCP, TLS,
//! authentication, privileges — and prints one line per check with the fix for each failure. It keeps going
//! where it can and never prints a secret.

use std::sync::Arc;
use std::time::Duration;

use pgwi_core::config::{ConfigSources, DatabaseConfig, LoadedConfig, split_host_port};
use pgwi_core::tls_rules::{TlsRules, Verification};
use pgwi_core::{ConnectError, connect_with};
use pgwi_credentials::{
    CachedTokenSource, ChainOutcome, ChainStep, CredentialError, SourceContext, SourceRegistry,
    TokenSource,
};
use sea_orm::sqlx;
use serde::Serialize;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It passed.
    Ok,
    /// It failed; see the fix.
    Failed,
    /// It could not run because an earlier check failed.
    Skipped,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked (`chain <kind>` for each source of `auto`'s chain).
    pub name: std::borrow::Cow<'static, str>,
    /// How it ended.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix a failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check, in order.
    pub checks: Vec<Check>,
    /// True when no check failed.
    pub ok: bool,
}

impl Report {
    fn push(
        &mut self,
        name: impl Into<std::borrow::Cow<'static, str>>,
        status: Status,
        detail: impl Into<String>,
        fix: Option<String>,
    ) {
        if status == Status::Failed {
            self.ok = false;
        }
        self.checks.push(Check {
            name: name.into(),
            status,
            detail: detail.into(),
            fix,
        });
    }

    fn skip(&mut self, names: &[&'static str], why: &str) {
        for name in names {
            self.push(*name, Status::Skipped, why, None);
        }
    }

    /// One line per check (✓, ✗ or –), with the fix under each failure.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for check in &self.checks {
            let mark = match check.status {
                Status::Ok => "✓",
                Status::Failed => "✗",
                Status::Skipped => "–",
            };
            out.push_str(&format!("{mark} {}: {}\n", check.name, check.detail));
            if let Some(fix) = &check.fix {
                out.push_str(&format!("    fix: {fix}\n"));
            }
        }
        out
    }
}

const AFTER_CONFIG: [&str; 9] = [
    "sslmode",
    "credential inputs",
    "token",
    "dns",
    "tcp",
    "tls",
    "authentication",
    "database",
    "privileges",
];

/// Runs every check.
pub async fn run(sources: &ConfigSources, ctx: &SourceContext) -> Report {
    let mut report = Report {
        checks: Vec::new(),
        ok: true,
    };
    let Some(loaded) = check_configuration(&mut report, sources) else {
        return report;
    };
    let config = &loaded.config;
    let registry = SourceRegistry::default();
    let (credential, chain) = build_credential(&registry, &config.credential, ctx);
    let token = match &credential {
        Ok(credential) => Some(credential.token().await),
        Err(_) => None,
    };
    report_inputs(&mut report, &registry, &loaded, chain.as_deref(), ctx);
    let credential = match credential {
        Ok(credential) => credential,
        Err(e) => {
            report.push(
                "token",
                Status::Failed,
                e.problem(),
                Some(e.fix().to_owned()),
            );
            return network_checks(report, &loaded, None).await;
        }
    };
    match token {
        Some(Ok(token)) => {
            report.push(
                "token",
                Status::Ok,
                describe_token(&token, &credential),
                None,
            );
            network_checks(report, &loaded, Some(credential)).await
        }
        Some(Err(e)) => {
            report.push(
                "token",
                Status::Failed,
                describe(&e),
                Some(e.fix().to_owned()),
            );
            network_checks(report, &loaded, None).await
        }
        None => network_checks(report, &loaded, None).await,
    }
}

/// The `configuration` and `sslmode` lines; the configuration, unless it does not load (then every later
/// check is skipped).
fn check_configuration(report: &mut Report, sources: &ConfigSources) -> Option<LoadedConfig> {
    match pgwi_core::config::load(sources) {
        Ok(loaded) => {
            report.push("configuration", Status::Ok, describe_config(&loaded), None);
            check_sslmode(report, &loaded.config.database);
            Some(loaded)
        }
        Err(e) => {
            report.push(
                "configuration",
                Status::Failed,
                e.to_string(),
                Some("fix the value named above (pgwi.example.toml documents every key)".into()),
            );
            report.skip(&AFTER_CONFIG, "needs a valid configuration");
            None
        }
    }
}

/// The configured source behind a cache, and `auto`'s chain (for its lines) when that is the kind.
fn build_credential(
    registry: &SourceRegistry,
    config: &pgwi_credentials::CredentialConfig,
    ctx: &SourceContext,
) -> (
    Result<Arc<CachedTokenSource>, pgwi_credentials::CredentialError>,
    Option<Arc<pgwi_credentials::ChainSource>>,
) {
    let (built, chain) = if config.kind.trim() == pgwi_credentials::AUTO {
        match registry.build_chain(config, ctx) {
            Ok(chain) => (Ok(chain.clone() as Arc<dyn TokenSource>), Some(chain)),
            Err(e) => (Err(e), None),
        }
    } else {
        (registry.build(config, ctx), None)
    };
    let cached =
        built.map(|source| Arc::new(CachedTokenSource::new(source, config.cache_options())));
    (cached, chain)
}

/// `auto`: one line per source of the chain; then the inputs of the kind in use (or of the one that
/// stopped the chain), in its own words (`SourceKind::inputs`).
fn report_inputs(
    report: &mut Report,
    registry: &SourceRegistry,
    loaded: &LoadedConfig,
    chain: Option<&pgwi_credentials::ChainSource>,
    ctx: &SourceContext,
) {
    let config = &loaded.config.credential;
    let kind = if config.kind.trim() == pgwi_credentials::AUTO {
        let steps = match chain {
            Some(chain) => chain.steps(),
            None => static_steps(registry, loaded, ctx),
        };
        report_chain(report, &steps);
        steps
            .iter()
            .find(|step| {
                matches!(
                    step.outcome,
                    ChainOutcome::Chosen { .. }
                        | ChainOutcome::Failed { .. }
                        | ChainOutcome::Trying { .. }
                )
            })
            .map(|step| step.kind.clone())
    } else {
        Some(config.kind.trim().to_owned())
    };
    match kind {
        Some(kind) => match registry.inputs(&kind, config, ctx) {
            Ok(detail) => report.push("credential inputs", Status::Ok, detail, None),
            Err(e) => report.push(
                "credential inputs",
                Status::Failed,
                e.problem(),
                Some(e.fix().to_owned()),
            ),
        },
        None => report.push(
            "credential inputs",
            Status::Failed,
            "no source of credential.chain works here (see the chain lines above)",
            Some(
                "give one source the input it lacks, or set credential.kind to the source you mean"
                    .into(),
            ),
        ),
    }
}

/// The `token` line for a token the source gave: where from, its expiry and identity, never the token.
fn describe_token(token: &pgwi_credentials::Token, credential: &CachedTokenSource) -> String {
    match (
        token.expires_at(),
        token.claims().and_then(|c| c.database_user()),
    ) {
        (Some(expiry), Some(name)) => format!(
            "from {}, expires {expiry}, identity {name}",
            credential.info()
        ),
        (Some(expiry), None) => format!("from {}, expires {expiry}", credential.info()),
        _ => format!("a static password from {}", credential.info()),
    }
}

/// The chain's sources with whether their inputs are there, when the chain could not even be built.
fn static_steps(
    registry: &SourceRegistry,
    loaded: &LoadedConfig,
    ctx: &SourceContext,
) -> Vec<ChainStep> {
    let credential = &loaded.config.credential;
    pgwi_credentials::present_steps(
        registry,
        &registry.chain(credential).unwrap_or_default(),
        credential,
        ctx,
    )
}

/// `chain <kind>` lines: ✓ for the source chosen, – with the reason for those skipped or not tried, ✗ with
/// the fix for the one that stopped the chain.
fn report_chain(report: &mut Report, steps: &[ChainStep]) {
    let chosen = steps.iter().find_map(|step| match step.outcome {
        ChainOutcome::Chosen { .. } | ChainOutcome::Failed { .. } | ChainOutcome::Trying { .. } => {
            Some(step.kind.as_str())
        }
        _ => None,
    });
    for step in steps {
        let name = format!("chain {}", step.kind);
        match &step.outcome {
            ChainOutcome::Chosen { why } => {
                report.push(name, Status::Ok, format!("chosen: {why}"), None)
            }
            ChainOutcome::Skipped { reason } => {
                report.push(name, Status::Skipped, format!("skipped: {reason}"), None)
            }
            ChainOutcome::Failed { error } => report.push(
                name,
                Status::Failed,
                format!("stopped the chain: {}", describe(error)),
                Some(error.fix().to_owned()),
            ),
            ChainOutcome::Present { why } => {
                report.push(name, Status::Skipped, format!("not tried ({why})"), None)
            }
            ChainOutcome::Trying { why } => report.push(
                name,
                Status::Failed,
                format!(
                    "gave no answer before credential.fetch_timeout_secs passed (it was being asked: {why})"
                ),
                Some(
                    "find out what it waits for; raise credential.fetch_timeout_secs if it is merely slow"
                        .into(),
                ),
            ),
            ChainOutcome::NotTried => report.push(
                name,
                Status::Skipped,
                format!(
                    "not tried: {} came first",
                    chosen.unwrap_or("another source")
                ),
                None,
            ),
        }
    }
}

/// What `database.sslmode` verifies of the server, by the rules the pool and the proxy follow: ✗ with the
/// fix when a token or password would go to a non-local server that is not verified (the warning they log
/// at start), whether or not the server is reachable from here.
fn check_sslmode(report: &mut Report, db: &DatabaseConfig) {
    let host = split_host_port(db.host.as_deref().unwrap_or_default())
        .map(|(host, _)| host)
        .unwrap_or_default();
    let rules = TlsRules::new(db, &host);
    if let Some(exposure) = rules.exposure() {
        report.push(
            "sslmode",
            Status::Failed,
            format!("database.sslmode {}", exposure.problem),
            Some(exposure.fix),
        );
        return;
    }
    let detail = match &rules.verification {
        _ if rules.is_local() => format!(
            "{} to {host}, on this machine: nothing crosses a network",
            rules.sslmode
        ),
        Verification::Full(file) => format!(
            "{}the certificate must chain to Mozilla's roots{} and name {host}",
            if rules.raised.is_some() {
                "verify-ca without database.ssl_root_cert is used as verify-full: "
            } else {
                "verify-full: "
            },
            file.as_ref()
                .map(|file| format!(" or a CA of {}", file.display()))
                .unwrap_or_default()
        ),
        // Any other rule to a host that is not local is an exposure, reported above.
        _ => format!("{} to {host}", rules.sslmode),
    };
    report.push("sslmode", Status::Ok, detail, None);
}

/// An error's problem with its AADSTS code.
fn describe(error: &CredentialError) -> String {
    match error.code() {
        Some(code) => format!("{} [AADSTS{code}]", error.problem()),
        None => error.problem().to_owned(),
    }
}

fn describe_config(loaded: &LoadedConfig) -> String {
    let db = &loaded.config.database;
    format!(
        "profile {} ({}); host {} from {}; database {} from {}; user {} from {}; sslmode {}; credential.kind {} from {}",
        loaded.profile,
        loaded.file.as_ref().map_or_else(
            || "no config file".to_owned(),
            |f| format!("file {}", f.display())
        ),
        db.host.as_deref().unwrap_or_default(),
        loaded.origin("database.host"),
        db.name.as_deref().unwrap_or_default(),
        loaded.origin("database.name"),
        db.user.as_deref().unwrap_or_default(),
        loaded.origin("database.user"),
        db.sslmode,
        loaded.config.credential.kind,
        loaded.origin("credential.kind"),
    )
}

async fn network_checks(
    mut report: Report,
    loaded: &LoadedConfig,
    credential: Option<Arc<CachedTokenSource>>,
) -> Report {
    let db = &loaded.config.database;
    let Some((host, port)) =
        check_host(&mut report, db.host.as_deref().unwrap_or_default(), db.port)
    else {
        return report;
    };
    if host.starts_with('/') {
        report.push(
            "dns",
            Status::Ok,
            format!("{host} is a Unix-socket directory: no DNS, TCP or TLS"),
            None,
        );
        report.push("tcp", Status::Ok, "not needed over a Unix socket", None);
    } else {
        let Some(addresses) = check_dns(&mut report, &host, port).await else {
            return report;
        };
        if !check_tcp(&mut report, &host, port, &addresses).await {
            return report;
        }
    }
    let Some(credential) = credential else {
        report.skip(AFTER_TCP, "needs a token");
        return report;
    };
    check_login(&mut report, loaded, credential, &host).await;
    report
}

/// The checks that need a TCP connection, a login, a database: skipped together when an earlier one fails.
const AFTER_DNS: &[&str] = &["tcp", "tls", "authentication", "database", "privileges"];
const AFTER_TCP: &[&str] = &["tls", "authentication", "database", "privileges"];

/// `database.host` as host and port.
fn check_host(report: &mut Report, raw: &str, default_port: u16) -> Option<(String, u16)> {
    match split_host_port(raw) {
        Ok((host, port)) => Some((host, port.unwrap_or(default_port))),
        Err(e) => {
            report.push(
                "dns",
                Status::Failed,
                e,
                Some("write database.host as host or host:port".into()),
            );
            report.skip(AFTER_DNS, "needs a host");
            None
        }
    }
}

async fn check_dns(
    report: &mut Report,
    host: &str,
    port: u16,
) -> Option<Vec<std::net::SocketAddr>> {
    match tokio::net::lookup_host((host, port)).await {
        Ok(addresses) => {
            let addresses: Vec<_> = addresses.collect();
            let ips: Vec<String> = addresses.iter().map(|a| a.ip().to_string()).collect();
            report.push(
                "dns",
                Status::Ok,
                format!("{host} resolves to {}", ips.join(", ")),
                None,
            );
            Some(addresses)
        }
        Err(e) => {
            report.push(
                "dns",
                Status::Failed,
                format!("{host} does not resolve: {e}"),
                Some("check database.host; for a private server, that the private DNS zone is linked to this network".into()),
            );
            report.skip(AFTER_DNS, "needs a resolvable host");
            None
        }
    }
}

async fn check_tcp(
    report: &mut Report,
    host: &str,
    port: u16,
    addresses: &[std::net::SocketAddr],
) -> bool {
    let connected = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::TcpStream::connect(addresses),
    )
    .await;
    let (detail, fix) = match connected {
        Ok(Ok(_)) => {
            report.push(
                "tcp",
                Status::Ok,
                format!("connected to {host}:{port}"),
                None,
            );
            return true;
        }
        Ok(Err(e)) => (
            format!("{host}:{port}: {e}"),
            "check database.port, that the server runs, and firewall rules / NSGs / private access between here and the server",
        ),
        Err(_) => (
            format!("{host}:{port}: no answer within 5s"),
            "a firewall or NSG is probably dropping packets; check network rules and private access",
        ),
    };
    report.push("tcp", Status::Failed, detail, Some(fix.into()));
    report.skip(AFTER_TCP, "needs a TCP connection");
    false
}

/// TLS and login through pgwi's own connect path, then the database and privileges.
async fn check_login(
    report: &mut Report,
    loaded: &LoadedConfig,
    credential: Arc<CachedTokenSource>,
    host: &str,
) {
    let sslmode = loaded.config.database.sslmode;
    let mut config = loaded.config.clone();
    config.database.max_connections = 1;
    config.database.connect_timeout_secs = config.database.connect_timeout_secs.min(10);
    let tls_ok = |report: &mut Report| {
        report.push(
            "tls",
            Status::Ok,
            format!("handshake done with sslmode={sslmode}"),
            None,
        );
    };
    match connect_with(&config, credential).await {
        Ok(database) => {
            tls_ok(report);
            report.push(
                "authentication",
                Status::Ok,
                format!("logged in as {}", database.user()),
                None,
            );
            check_privileges(report, &database).await;
            database.close().await;
        }
        Err(ConnectError::Tls { detail, .. }) => {
            report.push("tls", Status::Failed, detail, Some(format!("with sslmode={sslmode} the certificate must chain to a trusted CA (database.ssl_root_cert adds one) and name {host}")));
            report.skip(&["authentication", "database", "privileges"], "needs TLS");
        }
        Err(ConnectError::Authentication(failure)) => {
            tls_ok(report);
            report.push(
                "authentication",
                Status::Failed,
                format!("{}: {} (user {:?})", failure.code, failure.message, failure.user),
                Some("the user must be the managed identity's NAME (not its client id; `user = \"auto\"` derives it); the role must exist (`pgwi admin bootstrap`); for a static password, check it".into()),
            );
            report.skip(&["database", "privileges"], "needs a login");
        }
        Err(e) => {
            let hint = crate::hints::for_cause(&e).unwrap_or("see the message above");
            report.push("tls", Status::Failed, e.to_string(), Some(hint.into()));
            report.skip(
                &["authentication", "database", "privileges"],
                "needs a connection",
            );
        }
    }
}

async fn check_privileges(report: &mut Report, database: &pgwi_core::RotatingPool) {
    let row: Result<(String, bool, bool), sqlx::Error> = sqlx::query_as(
        "SELECT current_database()::text, has_database_privilege(current_database(), 'CONNECT'), has_schema_privilege('public', 'CREATE')",
    )
    .fetch_one(database.pool())
    .await;
    let bootstrap = || Some("run `pgwi admin bootstrap`".to_owned());
    match row {
        Ok((name, true, can_create)) => {
            report.push("database", Status::Ok, format!("connected to {name}"), None);
            if can_create {
                report.push(
                    "privileges",
                    Status::Ok,
                    format!("{} may create in schema public", database.user()),
                    None,
                );
            } else {
                report.push(
                    "privileges",
                    Status::Failed,
                    format!("{} may not create in schema public", database.user()),
                    Some(
                        "run `pgwi admin bootstrap` (it makes the identity owner of schema public)"
                            .into(),
                    ),
                );
            }
        }
        Ok((name, false, _)) => report.push(
            "database",
            Status::Failed,
            format!("no CONNECT privilege on {name}"),
            bootstrap(),
        ),
        Err(e) => report.push("database", Status::Failed, e.to_string(), bootstrap()),
    }
}

/// `pgwi doctor [--json]`: exit status 1 when any check failed.
pub async fn execute(
    sources: &ConfigSources,
    json: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let report = run(sources, &SourceContext::default()).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}
