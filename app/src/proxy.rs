//! `pgwi proxy`: a local PostgreSQL endpoint for psql, Python, Go, `pg_dump` — any client — that logs in to
//! the configured server with a fresh token per session. This module maps the `[proxy]` configuration
//! section and the flags onto [`pgwi_core::proxy::server::ProxyServer`] (listeners, the local password,
//! TLS, `/healthz` and `/livez`, the drain) and [`pgwi_core::proxy::Proxy`] (limits), and stops it on
//! SIGTERM/SIGINT.
//!
//! Loopback addresses and Unix socket directories only, unless `--allow-remote` with a local password that
//! clients on the non-loopback listeners must prove (SCRAM-SHA-256, bound to the proxy's certificate when
//! `--tls-cert` is set, which those listeners then require); never an open door on the network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use pgwi_core::ConfigError;
use pgwi_core::config::{ConfigSources, LoadedConfig};
use pgwi_core::proxy::server::{Listen, ProxyServer, check_socket_directory};
use pgwi_core::proxy::{ClientTls, LocalSecret, Proxy, ProxyOptions};
use pgwi_credentials::{SourceContext, SourceRegistry};
use serde::Deserialize as _;

/// The default listen address: where libpq looks by default, on loopback.
const DEFAULT_LISTEN: &str = "127.0.0.1:5432";
/// The port of a socket directory given without one (libpq's default).
const DEFAULT_SOCKET_PORT: u16 = 5432;
/// The default cap on concurrent clients: each holds a backend of the server, whose own limit is usually
/// lower; the cap keeps a runaway client from exhausting the proxy's file descriptors and memory.
const DEFAULT_MAX_CLIENTS: usize = pgwi_core::proxy::DEFAULT_MAX_CLIENTS;
/// The default mode of Unix socket files: the proxy's own OS user only (see [`ProxyConfig::socket_mode`]).
const DEFAULT_SOCKET_MODE: u32 = pgwi_core::proxy::server::DEFAULT_SOCKET_MODE;

/// The `proxy` section of the configuration; each key can also be given as a flag.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Listen addresses: `HOST:PORT`, or a Unix socket directory (`/run/pgwi`, `/run/pgwi:6432`).
    #[serde(deserialize_with = "one_or_many")]
    pub listen: Option<Vec<String>>,
    /// `HOST:PORT` of the `GET /healthz` endpoint.
    pub healthz: Option<String>,
    /// Accept non-loopback listen addresses (their clients must prove the local password).
    pub allow_remote: bool,
    /// Once the drain begins, how long sessions get to reach an idle point before the rest are cut.
    /// Default 30.
    pub drain_timeout_secs: u64,
    /// After SIGTERM/SIGINT (or `POST /quitquitquit`), how long new connections are still accepted before
    /// the drain begins. Default 0.
    pub min_sigterm_delay_secs: u64,
    /// Answer `POST /quitquitquit` on the health address (from loopback clients): a graceful stop.
    pub quitquitquit: bool,
    /// Log in to the server once before serving; exit 1 with the reason when that fails.
    pub run_connection_test: bool,
    /// End a session at its first idle point after the token it logged in with has expired.
    pub end_sessions_after_token_expiry: bool,
    /// A file holding the local password remote clients must prove.
    pub local_password_file: Option<PathBuf>,
    /// The environment variable holding that password.
    pub local_password_env: Option<String>,
    /// How many clients may be connected at once; one more gets PostgreSQL's 53300. Default 1000.
    pub max_clients: usize,
    /// The permissions of Unix socket files, in octal (`"0700"`, `"0770"`). Default `0700`: a socket
    /// gives a session as the identity without a password, so only the proxy's own OS user may connect
    /// (unlike PostgreSQL's 0777, which authenticates each client itself).
    #[serde(deserialize_with = "octal_mode")]
    pub socket_mode: Option<String>,
    /// How long a client has for its whole start-up (TLS, start-up message, local password). Default 5.
    pub startup_timeout_secs: u64,
    /// A PEM certificate (chain) for TLS on the client hop; with it, remote listeners require TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// The PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// `prefer` (default): over TLS, the local password is offered as SCRAM-SHA-256-PLUS and
    /// SCRAM-SHA-256; `require`: as SCRAM-SHA-256-PLUS only, so a client a relay stripped of TLS is refused.
    pub channel_binding: ChannelBinding,
}

/// Whether remote clients must bind the local password exchange to the proxy's certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ChannelBinding {
    /// SCRAM-SHA-256-PLUS offered first, SCRAM-SHA-256 accepted.
    #[default]
    Prefer,
    /// SCRAM-SHA-256-PLUS only (needs --tls-cert).
    Require,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: None,
            healthz: None,
            allow_remote: false,
            drain_timeout_secs: 30,
            min_sigterm_delay_secs: 0,
            quitquitquit: false,
            run_connection_test: false,
            end_sessions_after_token_expiry: false,
            local_password_file: None,
            local_password_env: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            socket_mode: None,
            startup_timeout_secs: pgwi_core::proxy::DEFAULT_STARTUP_TIMEOUT.as_secs(),
            tls_cert_file: None,
            tls_key_file: None,
            channel_binding: ChannelBinding::Prefer,
        }
    }
}

/// `PGWI_PROXY__LISTEN=127.0.0.1:6432` is one address; the file may give a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Option::<OneOrMany>::deserialize(d)?.map(|v| match v {
        OneOrMany::One(one) => vec![one],
        OneOrMany::Many(many) => many,
    }))
}

/// A mode as written: a string (`"0770"`), or digits an environment variable turned into a number
/// (`PGWI_PROXY__SOCKET_MODE=0770`), read as octal digits either way.
fn octal_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Text(String),
        Digits(u64),
    }
    Ok(Option::<Mode>::deserialize(d)?.map(|mode| match mode {
        Mode::Text(text) => text,
        Mode::Digits(digits) => digits.to_string(),
    }))
}

/// `0700`, `700` or `0o700` as permission bits (at most `0777`).
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    if digits.is_empty() || digits.len() > 4 {
        return None;
    }
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|mode| *mode <= 0o777)
}

/// `pgwi proxy`'s flags; each falls back to the `proxy` section of the configuration.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = "Proxy")]
pub struct ProxyArgs {
    /// Where clients connect, repeatable: HOST:PORT (TCP), or an absolute Unix socket directory, where
    /// .s.PGSQL.5432 is created (DIR:PORT names the port: /run/pgwi:6432 serves `psql -h /run/pgwi -p 6432`)
    /// [default: 127.0.0.1:5432; config: proxy.listen]
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Serve `GET /healthz` on HOST:PORT: 200 while listening with a valid token, 503 while draining or
    /// without one (readiness); `GET /livez`: 200 while the process serves (liveness: a token outage must
    /// not restart it); and `GET /metrics` in Prometheus' text format [config: proxy.healthz]
    #[arg(long, value_name = "ADDR")]
    pub healthz: Option<String>,
    /// Allow non-loopback listen addresses; their clients must prove the local password (SCRAM-SHA-256)
    /// from proxy.local_password_file or proxy.local_password_env [config: proxy.allow_remote]
    #[arg(long)]
    pub allow_remote: bool,
    /// After SIGTERM, SIGINT or POST /quitquitquit, how long new connections are still accepted (readiness
    /// already 503), so clients a rolling update still sends here are served; then the drain begins
    /// [default: 0; config: proxy.min_sigterm_delay_secs]
    #[arg(long = "min-sigterm-delay", value_name = "SECS")]
    pub min_sigterm_delay_secs: Option<u64>,
    /// The drain: idle sessions are ended at once (PostgreSQL's 57P01, so clients reconnect elsewhere),
    /// sessions in a transaction when it ends; those left after N seconds are cut. The proxy exits 0 as
    /// soon as no session is left [default: 30; config: proxy.drain_timeout_secs]
    #[arg(long, value_name = "N")]
    pub drain_timeout_secs: Option<u64>,
    /// Answer POST /quitquitquit on the --healthz address, from loopback clients only (a pod's other
    /// containers): a graceful stop and exit 0, e.g. when a Job's main container is done
    /// [config: proxy.quitquitquit]
    #[arg(long)]
    pub quitquitquit: bool,
    /// Log in to the server once before serving, as a client's session would; exit 1 with the reason if
    /// that fails (GET /startup answers 200 only after it passed) [config: proxy.run_connection_test]
    #[arg(long)]
    pub run_connection_test: bool,
    /// End each session at its first idle point after the token it logged in with expired (57P01 with a
    /// hint), so an identity revoked in Entra loses its sessions within one token lifetime; long-lived
    /// sessions then reconnect about hourly [config: proxy.end_sessions_after_token_expiry]
    #[arg(long)]
    pub end_sessions_after_token_expiry: bool,
    /// How many clients may be past their start-up at once; one more gets PostgreSQL's "too many clients"
    /// (53300). Clients still in their start-up count apart, at most 64 per listener
    /// [default: 1000; config: proxy.max_clients]
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
    /// How long a client has, from its connection, for its whole start-up: TLS, the start-up message and
    /// the local password (PostgreSQL's authentication_timeout) [default: 5; config:
    /// proxy.startup_timeout_secs]
    #[arg(long, value_name = "N")]
    pub startup_timeout_secs: Option<u64>,
    /// TLS on the client hop: a PEM certificate (chain, leaf first). SSLRequests are answered with TLS,
    /// remote listeners refuse clients without it, and the local password is offered as
    /// SCRAM-SHA-256-PLUS (channel binding) [config: proxy.tls_cert_file]
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert [config: proxy.tls_key_file]
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// `require`: remote clients must bind the local password to the proxy's certificate
    /// (SCRAM-SHA-256-PLUS, libpq's channel_binding), so a relay that strips TLS gets nothing; `prefer`
    /// offers it first [default: prefer; config: proxy.channel_binding]
    #[arg(long, value_name = "MODE")]
    pub channel_binding: Option<ChannelBinding>,
    /// Permissions of the Unix socket files, octal: 0700 lets only this OS user connect, 0770 its group
    /// too; whoever can connect gets a session as the identity [default: 0700; config: proxy.socket_mode]
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<String>,
}

/// `HOST:PORT` with an IP address (or `localhost`) and a port.
fn parse_socket_addr(text: &str) -> Option<SocketAddr> {
    let text = text.trim();
    match text.strip_prefix("localhost:") {
        Some(port) => Some(SocketAddr::from(([127, 0, 0, 1], port.parse().ok()?))),
        None => text.parse().ok(),
    }
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    let text = text.trim();
    if text.starts_with('/') {
        return Ok(match text.rsplit_once(':') {
            Some((dir, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                let port = port
                    .parse()
                    .map_err(|_| format!("{text:?} has a port above 65535"))?;
                Listen::Unix {
                    dir: PathBuf::from(dir),
                    port,
                }
            }
            _ => Listen::Unix {
                dir: PathBuf::from(text),
                port: DEFAULT_SOCKET_PORT,
            },
        });
    }
    parse_socket_addr(text).map(Listen::Tcp).ok_or_else(|| {
        format!(
            "{text:?} is neither HOST:PORT with an IP address (127.0.0.1:5432, [::1]:5432) nor an \
             absolute Unix socket directory (/run/pgwi, /run/pgwi:6432)"
        )
    })
}

/// The proxy's settings: flags over the `proxy` section.
struct Settings {
    listen: Vec<Listen>,
    healthz: Option<SocketAddr>,
    drain_timeout: Duration,
    min_sigterm_delay: Duration,
    quitquitquit: bool,
    run_connection_test: bool,
    local_secret: Option<Arc<LocalSecret>>,
    max_clients: usize,
    socket_mode: u32,
    startup_timeout: Duration,
    tls: Option<ClientTls>,
    end_sessions_after_token_expiry: bool,
}

impl Settings {
    /// Each setting from its flag, else its key in the `proxy` section, else its default; one error naming
    /// the key, where the value came from and the fix for the first that is wrong.
    fn resolve(
        args: ProxyArgs,
        section: ProxyConfig,
        loaded: &LoadedConfig,
    ) -> Result<Self, ConfigError> {
        let origin = |flag: &str, set: bool, key: &str| {
            if set {
                flag.to_owned()
            } else {
                loaded.origin(key)
            }
        };
        let allow_remote = args.allow_remote || section.allow_remote;
        let listen = listeners(args.listen, &section, loaded, allow_remote)?;
        let local_secret = match listen.iter().any(Listen::is_remote) {
            true => Some(remote_secret(&section, loaded)?),
            false => None,
        };
        let healthz_origin = origin("--healthz", args.healthz.is_some(), "proxy.healthz");
        let healthz = health_address(args.healthz.or(section.healthz.clone()), healthz_origin)?;
        let max_clients_origin = origin(
            "--max-clients",
            args.max_clients.is_some(),
            "proxy.max_clients",
        );
        let max_clients = max_clients(
            args.max_clients.unwrap_or(section.max_clients),
            max_clients_origin,
        )?;
        let mode_origin = origin(
            "--socket-mode",
            args.socket_mode.is_some(),
            "proxy.socket_mode",
        );
        let socket_mode = socket_mode(
            args.socket_mode.or(section.socket_mode.clone()),
            mode_origin,
        )?;
        let startup_timeout = startup_timeout(args.startup_timeout_secs, &section, loaded)?;
        let binding_origin = origin(
            "--channel-binding",
            args.channel_binding.is_some(),
            "proxy.channel_binding",
        );
        let binding = args.channel_binding.unwrap_or(section.channel_binding);
        let tls = client_tls(args.tls_cert, args.tls_key, &section, loaded)?;
        let tls = with_channel_binding(tls, binding, binding_origin)?;
        let drain_timeout = args
            .drain_timeout_secs
            .unwrap_or(section.drain_timeout_secs);
        let min_sigterm_delay = args
            .min_sigterm_delay_secs
            .unwrap_or(section.min_sigterm_delay_secs);
        let quitquitquit = args.quitquitquit || section.quitquitquit;
        if quitquitquit && healthz.is_none() {
            return Err(ConfigError::rejected(
                "proxy.quitquitquit",
                origin("--quitquitquit", args.quitquitquit, "proxy.quitquitquit"),
                "is on, but there is no health address to serve POST /quitquitquit on",
                "set --healthz (proxy.healthz), e.g. 127.0.0.1:9801",
            ));
        }
        Ok(Self {
            listen,
            healthz,
            max_clients,
            socket_mode,
            startup_timeout,
            tls,
            drain_timeout: Duration::from_secs(drain_timeout),
            min_sigterm_delay: Duration::from_secs(min_sigterm_delay),
            quitquitquit,
            run_connection_test: args.run_connection_test || section.run_connection_test,
            end_sessions_after_token_expiry: args.end_sessions_after_token_expiry
                || section.end_sessions_after_token_expiry,
            local_secret,
        })
    }
}

/// The listen addresses: `--listen`, else `proxy.listen`, else the default; a non-loopback one only with
/// `allow_remote`, a socket directory only where no other user can replace the socket.
fn listeners(
    flags: Vec<String>,
    section: &ProxyConfig,
    loaded: &LoadedConfig,
    allow_remote: bool,
) -> Result<Vec<Listen>, ConfigError> {
    let (listen, origin) = if !flags.is_empty() {
        (flags, "--listen".to_owned())
    } else if let Some(listen) = section.listen.clone().filter(|l| !l.is_empty()) {
        (listen, loaded.origin("proxy.listen"))
    } else {
        (vec![DEFAULT_LISTEN.to_owned()], "the default".to_owned())
    };
    let rejected = |problem: String, fix: &str| {
        ConfigError::rejected("proxy.listen", origin.clone(), problem, fix)
    };
    let mut parsed = Vec::new();
    for text in &listen {
        let address = parse_listen(text).map_err(|problem| {
            rejected(
                problem,
                "write HOST:PORT or an absolute socket directory, optionally DIR:PORT",
            )
        })?;
        if address.is_remote() && !allow_remote {
            return Err(rejected(
                format!(
                    "includes {text}, which is not a loopback address: anyone who reaches it would get a \
                     connection logged in with this identity's token"
                ),
                "listen on 127.0.0.1, [::1] or a Unix socket directory (a sidecar's clients share the \
                 pod's loopback); to serve other hosts pass --allow-remote (proxy.allow_remote) and set \
                 proxy.local_password_file or proxy.local_password_env, the password those clients must \
                 give",
            ));
        }
        if let Listen::Unix { dir, .. } = &address {
            check_socket_directory(dir)
                .map_err(|problem| rejected(problem, SOCKET_DIRECTORY_FIX))?;
        }
        parsed.push(address);
    }
    Ok(parsed)
}

/// The fix for a socket directory that cannot be served.
#[cfg(unix)]
const SOCKET_DIRECTORY_FIX: &str = "remove that permission (chmod o-w DIR) or listen in a directory only \
                                    this user (and its group) can write to";
#[cfg(not(unix))]
const SOCKET_DIRECTORY_FIX: &str = "listen on 127.0.0.1:PORT instead";

/// The SCRAM verifier of the local password remote clients must prove.
fn remote_secret(
    section: &ProxyConfig,
    loaded: &LoadedConfig,
) -> Result<Arc<LocalSecret>, ConfigError> {
    let password = local_password(section, loaded)?;
    LocalSecret::new(password.as_str())
        .map(Arc::new)
        .map_err(|e| {
            ConfigError::rejected(
                "proxy.local_password_file",
                "the local password",
                e.to_string(),
                "try again",
            )
        })
}

/// The health endpoint's address, if any.
fn health_address(text: Option<String>, origin: String) -> Result<Option<SocketAddr>, ConfigError> {
    let Some(text) = text else {
        return Ok(None);
    };
    parse_socket_addr(&text).map(Some).ok_or_else(|| {
        ConfigError::rejected(
            "proxy.healthz",
            origin,
            format!("{text:?} is not HOST:PORT with an IP address"),
            "write e.g. 0.0.0.0:8080 (probes reach the pod's address) or 127.0.0.1:8080",
        )
    })
}

/// The cap on sessions: at least 1.
fn max_clients(max_clients: usize, origin: String) -> Result<usize, ConfigError> {
    if max_clients == 0 {
        return Err(ConfigError::rejected(
            "proxy.max_clients",
            origin,
            "is 0: no client could connect",
            "set it to at least 1 (default 1000)",
        ));
    }
    Ok(max_clients)
}

/// The socket files' mode, octal (default [`DEFAULT_SOCKET_MODE`]).
fn socket_mode(text: Option<String>, origin: String) -> Result<u32, ConfigError> {
    let Some(text) = text else {
        return Ok(DEFAULT_SOCKET_MODE);
    };
    parse_mode(&text).ok_or_else(|| {
        ConfigError::rejected(
            "proxy.socket_mode",
            origin,
            format!("{text:?} is not an octal file mode of at most 0777"),
            "write e.g. 0700 (this OS user only) or 0770 (its group too), as a string in the file",
        )
    })
}

/// The client hop's TLS with `binding` applied: `require` needs TLS and a certificate with a binding hash.
fn with_channel_binding(
    tls: Option<ClientTls>,
    binding: ChannelBinding,
    origin: String,
) -> Result<Option<ClientTls>, ConfigError> {
    let rejected = |problem: String, fix: &str| {
        ConfigError::rejected("proxy.channel_binding", origin.clone(), problem, fix)
    };
    match (tls, binding) {
        (None, ChannelBinding::Require) => Err(rejected(
            "is require, but the client hop has no TLS to bind to".into(),
            "set --tls-cert and --tls-key (proxy.tls_cert_file, proxy.tls_key_file), or use prefer",
        )),
        (None, ChannelBinding::Prefer) => Ok(None),
        (Some(tls), binding) => tls
            .require_channel_binding(binding == ChannelBinding::Require)
            .map(Some)
            .map_err(|e| {
                rejected(
                    e.to_string(),
                    "use prefer, or a certificate signed with ECDSA or RSA and SHA-256/384/512",
                )
            }),
    }
}

/// `--startup-timeout-secs` over `proxy.startup_timeout_secs`: at least 1.
fn startup_timeout(
    flag: Option<u64>,
    section: &ProxyConfig,
    loaded: &LoadedConfig,
) -> Result<Duration, ConfigError> {
    let (secs, origin) = match flag {
        Some(secs) => (secs, "--startup-timeout-secs".to_owned()),
        None => (
            section.startup_timeout_secs,
            loaded.origin("proxy.startup_timeout_secs"),
        ),
    };
    if secs == 0 {
        return Err(ConfigError::rejected(
            "proxy.startup_timeout_secs",
            origin,
            "is 0: no client could finish its start-up",
            "set it to a few seconds (default 5)",
        ));
    }
    Ok(Duration::from_secs(secs))
}

/// The fix when only one of the client hop's certificate and key is set.
const BOTH_TLS_FILES: &str =
    "set both: --tls-cert and --tls-key (proxy.tls_cert_file, proxy.tls_key_file)";

/// TLS for the client hop from `--tls-cert`/`--tls-key` over `proxy.tls_cert_file`/`proxy.tls_key_file`:
/// both or neither.
fn client_tls(
    cert_flag: Option<PathBuf>,
    key_flag: Option<PathBuf>,
    section: &ProxyConfig,
    loaded: &LoadedConfig,
) -> Result<Option<ClientTls>, ConfigError> {
    let origin = |flag: &str, key: &str, from_flag: bool| {
        if from_flag {
            flag.to_owned()
        } else {
            loaded.origin(key)
        }
    };
    let cert_origin = origin("--tls-cert", "proxy.tls_cert_file", cert_flag.is_some());
    let key_origin = origin("--tls-key", "proxy.tls_key_file", key_flag.is_some());
    let cert = cert_flag.or_else(|| section.tls_cert_file.clone());
    let key = key_flag.or_else(|| section.tls_key_file.clone());
    let (cert, key) = match (cert, key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(ConfigError::rejected(
                "proxy.tls_key_file",
                key_origin,
                format!("is not set, but a certificate is (from {cert_origin})"),
                BOTH_TLS_FILES,
            ));
        }
        (None, Some(_)) => {
            return Err(ConfigError::rejected(
                "proxy.tls_cert_file",
                cert_origin,
                format!("is not set, but a key is (from {key_origin})"),
                BOTH_TLS_FILES,
            ));
        }
    };
    ClientTls::from_pem_files(&cert, &key)
        .map(Some)
        .map_err(|e| {
            ConfigError::rejected(
                "proxy.tls_cert_file",
                format!("{cert_origin}, with the key from {key_origin}"),
                e.to_string(),
                "give a PEM certificate chain (leaf first) and the PEM private key that matches it",
            )
        })
}

/// The shortest local password accepted: remote clients can guess online (a second per failure per
/// connection, eight connections per address), and anyone who records an exchange without TLS offline.
const MIN_LOCAL_PASSWORD_CHARS: usize = 16;

/// The local password for remote clients: from `local_password_file`, else `local_password_env`; wiped
/// from memory once its SCRAM verifier is made.
fn local_password(
    section: &ProxyConfig,
    loaded: &LoadedConfig,
) -> Result<zeroize::Zeroizing<String>, ConfigError> {
    let reject = |key: &str, problem: String, fix: &str| {
        ConfigError::rejected(key, loaded.origin(key), problem, fix)
    };
    let password = match (&section.local_password_file, &section.local_password_env) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| {
                reject(
                    "proxy.local_password_file",
                    format!("names {}, which cannot be read: {e}", path.display()),
                    "point it at a readable file holding the password remote clients must give",
                )
            })?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, Some(var)) => std::env::var(var).map_err(|_| {
            reject(
                "proxy.local_password_env",
                format!("names {var}, which is not set (or not UTF-8)"),
                "set that variable to the password remote clients must give",
            )
        })?,
        (None, None) => {
            return Err(ConfigError::rejected(
                "proxy.local_password_file",
                "nowhere",
                "is not set, and neither is proxy.local_password_env, but --allow-remote \
                          serves non-loopback addresses, whose clients must authenticate",
                "set proxy.local_password_file (PGWI_PROXY__LOCAL_PASSWORD_FILE) or \
                      proxy.local_password_env (PGWI_PROXY__LOCAL_PASSWORD_ENV)",
            ));
        }
    };
    let password = zeroize::Zeroizing::new(password);
    let key = if section.local_password_file.is_some() {
        "proxy.local_password_file"
    } else {
        "proxy.local_password_env"
    };
    let chars = password.chars().count();
    if chars < MIN_LOCAL_PASSWORD_CHARS {
        return Err(reject(
            key,
            format!(
                "gives a password of {chars} characters; remote clients' passwords must have at least \
                 {MIN_LOCAL_PASSWORD_CHARS}"
            ),
            "use a long random one, e.g. from `head -c 24 /dev/urandom | base64` (clients give it as PGPASSWORD)",
        ));
    }
    Ok(password)
}

/// The proxy's limits from the `proxy` section (and flags): what `pgwi proxy` and `pgwi exec` share.
pub(crate) fn proxy_options(
    max_clients: usize,
    startup_timeout: Duration,
    end_sessions_after_token_expiry: bool,
) -> ProxyOptions {
    ProxyOptions {
        startup_timeout,
        max_clients,
        end_sessions_after_token_expiry,
    }
}

/// `pgwi proxy`: serves until SIGTERM/SIGINT (or `POST /quitquitquit`), then stops as
/// [`pgwi_core::proxy::server::BoundProxyServer::serve`] says and exits 0.
pub async fn execute(sources: &ConfigSources, args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let loaded = pgwi_core::config::load(sources)?;
    let settings = Settings::resolve(args, loaded.section("proxy")?, &loaded)?;
    // Installed before the first token is asked for, so that request is counted too.
    let metrics = match settings.healthz {
        Some(_) => Some(crate::metrics::install_prometheus()?),
        None => None,
    };
    let credential = SourceRegistry::default()
        .build_cached(&loaded.config.credential, &SourceContext::default())?;
    let options = proxy_options(
        settings.max_clients,
        settings.startup_timeout,
        settings.end_sessions_after_token_expiry,
    );
    let proxy = Proxy::start_with(&loaded.config, credential, options).await?;
    let mut server = ProxyServer::new(proxy)
        .drain_timeout(settings.drain_timeout)
        .min_stop_delay(settings.min_sigterm_delay)
        .socket_mode(settings.socket_mode)
        .test_connection_first(settings.run_connection_test);
    for listen in settings.listen {
        server = server.listen(listen);
    }
    if let Some(secret) = settings.local_secret {
        server = server.remote_password(secret);
    }
    if let Some(tls) = settings.tls {
        server = server.tls(tls);
    }
    if let (Some(address), Some(render)) = (settings.healthz, metrics) {
        // GET /metrics is served beside /healthz, /livez and /startup.
        server = server
            .health(address)
            .metrics(render)
            .quit_endpoint(settings.quitquitquit);
    }
    let server = server.bind().await?;
    // SIGTERM or SIGINT stops; a second one (Ctrl-C again in a terminal) does not wait for the deadline.
    let stop = async {
        if let Ok(signal) = crate::signals::termination().await {
            tracing::info!(signal, "stopping");
        }
    };
    let hurry = async {
        let _ = crate::signals::termination().await;
    };
    server.serve(stop, hurry).await;
    Ok(ExitCode::SUCCESS)
}
