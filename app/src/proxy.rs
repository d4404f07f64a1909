//! `pgwi proxy`: a local PostgreSQL endpoint for psql, Python, Go, `pg_dump` — any client — that logs in to
//! the configured server with a fresh token per session ([`pgwi_core::proxy`] serves each session; this
//! module owns the listeners, the `[proxy]` configuration section, `/healthz` and `/livez`, the cap on
//! concurrent clients, and the drain on SIGTERM).
//!
//! Loopback addresses and Unix socket directories only, unless `--allow-remote` with a local password that
//! clients on the non-loopback listeners must prove (SCRAM-SHA-256, bound to the proxy's certificate when
//! `--tls-cert` is set, which those listeners then require); never an open door on the network.
//!
//! Clients still in their start-up hold one of their listener's [`PENDING_PER_LISTENER`] slots for at most
//! the start-up timeout; while all are taken, that listener accepts no more (new connections wait in the
//! kernel's backlog, as a burst of real clients does for a moment), so a flood of silent connections on
//! one listener leaves the others served, and the work an attacker can cause is bounded on every path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use pgwi_core::ConfigError;
use pgwi_core::config::{ConfigSources, LoadedConfig};
use pgwi_core::proxy::{Client, ClientTls, Health, LocalSecret, Proxy, ProxyOptions};
use pgwi_credentials::{SourceContext, SourceRegistry};
use serde::Deserialize as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, Semaphore, watch};

/// The default listen address: where libpq looks by default, on loopback.
const DEFAULT_LISTEN: &str = "127.0.0.1:5432";
/// The port of a socket directory given without one (libpq's default).
const DEFAULT_SOCKET_PORT: u16 = 5432;
/// How long a health request may take to arrive.
const HEALTHZ_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// After the drain deadline, how long closed sessions get to finish logging.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// The default cap on concurrent clients: each holds a backend of the server, whose own limit is usually
/// lower; the cap keeps a runaway client from exhausting the proxy's file descriptors and memory.
const DEFAULT_MAX_CLIENTS: usize = pgwi_core::proxy::DEFAULT_MAX_CLIENTS;
/// Clients in their start-up (TLS, start-up message, local password) at once on one listener.
const PENDING_PER_LISTENER: usize = 64;
/// Health requests served at once; beyond that, connections are closed.
const HEALTH_REQUESTS_AT_ONCE: usize = 16;
/// The default mode of Unix socket files: the proxy's own OS user only (see [`ProxyConfig::socket_mode`]).
const DEFAULT_SOCKET_MODE: u32 = 0o700;

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
    /// How long open sessions may go on after SIGTERM/SIGINT. Default 30.
    pub drain_timeout_secs: u64,
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
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: None,
            healthz: None,
            allow_remote: false,
            drain_timeout_secs: 30,
            local_password_file: None,
            local_password_env: None,
            max_clients: DEFAULT_MAX_CLIENTS,
            socket_mode: None,
            startup_timeout_secs: pgwi_core::proxy::DEFAULT_STARTUP_TIMEOUT.as_secs(),
            tls_cert_file: None,
            tls_key_file: None,
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
pub struct ProxyArgs {
    /// Where clients connect, repeatable: HOST:PORT (TCP), or an absolute Unix socket directory, where
    /// .s.PGSQL.5432 is created (DIR:PORT names the port: /run/pgwi:6432 serves `psql -h /run/pgwi -p 6432`)
    /// [default: 127.0.0.1:5432; config: proxy.listen]
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Serve `GET /healthz` on HOST:PORT: 200 while listening with a valid token, 503 while draining or
    /// without one (readiness); and `GET /livez`: 200 while the process serves (liveness: a token outage
    /// must not restart it) [config: proxy.healthz]
    #[arg(long, value_name = "ADDR")]
    pub healthz: Option<String>,
    /// Allow non-loopback listen addresses; their clients must prove the local password (SCRAM-SHA-256)
    /// from proxy.local_password_file or proxy.local_password_env [config: proxy.allow_remote]
    #[arg(long)]
    pub allow_remote: bool,
    /// After SIGTERM or SIGINT, how long open sessions may go on before they are closed
    /// [default: 30; config: proxy.drain_timeout_secs]
    #[arg(long, value_name = "N")]
    pub drain_timeout_secs: Option<u64>,
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
    /// Permissions of the Unix socket files, octal: 0700 lets only this OS user connect, 0770 its group
    /// too; whoever can connect gets a session as the identity [default: 0700; config: proxy.socket_mode]
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<String>,
}

/// Where a listener is.
#[derive(Debug, Clone, PartialEq)]
enum Listen {
    Tcp(SocketAddr),
    /// A socket directory and the port in the socket's name.
    Unix(PathBuf, u16),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(addr) => write!(f, "{addr}"),
            Listen::Unix(dir, port) => write!(f, "{}", socket_path(dir, *port).display()),
        }
    }
}

fn socket_path(dir: &Path, port: u16) -> PathBuf {
    dir.join(format!(".s.PGSQL.{port}"))
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
                Listen::Unix(PathBuf::from(dir), port)
            }
            _ => Listen::Unix(PathBuf::from(text), DEFAULT_SOCKET_PORT),
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
    listen: Vec<(Listen, bool)>,
    healthz: Option<SocketAddr>,
    drain_timeout: Duration,
    local_secret: Option<Arc<LocalSecret>>,
    max_clients: usize,
    socket_mode: u32,
    startup_timeout: Duration,
    tls: Option<ClientTls>,
}

impl Settings {
    fn resolve(
        args: ProxyArgs,
        section: ProxyConfig,
        loaded: &LoadedConfig,
    ) -> Result<Self, ConfigError> {
        let reject =
            |key: &str, origin: String, problem: String, fix: &str| ConfigError::Rejected {
                key: key.into(),
                origin,
                problem,
                fix: fix.into(),
            };
        let (listen, listen_origin) = if !args.listen.is_empty() {
            (args.listen, "--listen".to_owned())
        } else if let Some(listen) = section.listen.clone().filter(|l| !l.is_empty()) {
            (listen, loaded.origin("proxy.listen"))
        } else {
            (vec![DEFAULT_LISTEN.to_owned()], "the default".to_owned())
        };
        let allow_remote = args.allow_remote || section.allow_remote;
        let mut parsed = Vec::new();
        for text in &listen {
            let address = parse_listen(text).map_err(|problem| {
                reject(
                    "proxy.listen",
                    listen_origin.clone(),
                    problem,
                    "write HOST:PORT or an absolute socket directory, optionally DIR:PORT",
                )
            })?;
            let remote = matches!(&address, Listen::Tcp(addr) if !addr.ip().is_loopback());
            if remote && !allow_remote {
                return Err(reject(
                    "proxy.listen",
                    listen_origin,
                    format!(
                        "includes {text}, which is not a loopback address: anyone who reaches it would \
                         get a connection logged in with this identity's token"
                    ),
                    "listen on 127.0.0.1, [::1] or a Unix socket directory (a sidecar's clients share \
                     the pod's loopback); to serve other hosts pass --allow-remote (proxy.allow_remote) \
                     and set proxy.local_password_file or proxy.local_password_env, the password those \
                     clients must give",
                ));
            }
            if let Listen::Unix(dir, _) = &address {
                check_socket_directory(dir).map_err(|problem| {
                    reject(
                        "proxy.listen",
                        listen_origin.clone(),
                        problem,
                        "remove that permission (chmod o-w DIR) or listen in a directory only this user \
                         (and its group) can write to",
                    )
                })?;
            }
            parsed.push((address, remote));
        }
        let local_secret = if parsed.iter().any(|(_, remote)| *remote) {
            let password = local_password(&section, loaded)?;
            Some(Arc::new(LocalSecret::new(&password).map_err(|e| {
                reject(
                    "proxy.local_password_file",
                    "the local password".into(),
                    e.to_string(),
                    "try again",
                )
            })?))
        } else {
            None
        };
        let healthz_origin = match &args.healthz {
            Some(_) => "--healthz".to_owned(),
            None => loaded.origin("proxy.healthz"),
        };
        let healthz = match args.healthz.or(section.healthz.clone()) {
            Some(text) => Some(parse_socket_addr(&text).ok_or_else(|| {
                reject(
                    "proxy.healthz",
                    healthz_origin,
                    format!("{text:?} is not HOST:PORT with an IP address"),
                    "write e.g. 0.0.0.0:8080 (probes reach the pod's address) or 127.0.0.1:8080",
                )
            })?),
            None => None,
        };
        let (max_clients, max_clients_origin) = match args.max_clients {
            Some(n) => (n, "--max-clients".to_owned()),
            None => (section.max_clients, loaded.origin("proxy.max_clients")),
        };
        if max_clients == 0 {
            return Err(reject(
                "proxy.max_clients",
                max_clients_origin,
                "is 0: no client could connect".into(),
                "set it to at least 1 (default 1000)",
            ));
        }
        let (mode_text, mode_origin) = match (args.socket_mode, section.socket_mode.clone()) {
            (Some(text), _) => (Some(text), "--socket-mode".to_owned()),
            (None, text) => (text, loaded.origin("proxy.socket_mode")),
        };
        let socket_mode = match mode_text {
            None => DEFAULT_SOCKET_MODE,
            Some(text) => parse_mode(&text).ok_or_else(|| {
                reject(
                    "proxy.socket_mode",
                    mode_origin,
                    format!("{text:?} is not an octal file mode of at most 0777"),
                    "write e.g. 0700 (this OS user only) or 0770 (its group too), as a string in the file",
                )
            })?,
        };
        let startup_timeout = startup_timeout(args.startup_timeout_secs, &section, loaded)?;
        let tls = client_tls(args.tls_cert, args.tls_key, &section, loaded)?;
        Ok(Self {
            listen: parsed,
            healthz,
            max_clients,
            socket_mode,
            startup_timeout,
            tls,
            drain_timeout: Duration::from_secs(
                args.drain_timeout_secs
                    .unwrap_or(section.drain_timeout_secs),
            ),
            local_secret,
        })
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
        return Err(ConfigError::Rejected {
            key: "proxy.startup_timeout_secs".into(),
            origin,
            problem: "is 0: no client could finish its start-up".into(),
            fix: "set it to a few seconds (default 5)".into(),
        });
    }
    Ok(Duration::from_secs(secs))
}

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
            return Err(ConfigError::Rejected {
                key: "proxy.tls_key_file".into(),
                origin: key_origin,
                problem: format!("is not set, but a certificate is (from {cert_origin})"),
                fix: "set both: --tls-cert and --tls-key (proxy.tls_cert_file, proxy.tls_key_file)"
                    .into(),
            });
        }
        (None, Some(_)) => {
            return Err(ConfigError::Rejected {
                key: "proxy.tls_cert_file".into(),
                origin: cert_origin,
                problem: format!("is not set, but a key is (from {key_origin})"),
                fix: "set both: --tls-cert and --tls-key (proxy.tls_cert_file, proxy.tls_key_file)"
                    .into(),
            });
        }
    };
    ClientTls::from_pem_files(&cert, &key)
        .map(Some)
        .map_err(|e| ConfigError::Rejected {
            key: "proxy.tls_cert_file".into(),
            origin: format!("{cert_origin}, with the key from {key_origin}"),
            problem: e.to_string(),
            fix:
                "give a PEM certificate chain (leaf first) and the PEM private key that matches it"
                    .into(),
        })
}

/// The local password for remote clients: from `local_password_file`, else `local_password_env`.
fn local_password(section: &ProxyConfig, loaded: &LoadedConfig) -> Result<String, ConfigError> {
    let reject = |key: &str, problem: String, fix: &str| ConfigError::Rejected {
        key: key.into(),
        origin: loaded.origin(key),
        problem,
        fix: fix.into(),
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
            return Err(ConfigError::Rejected {
                key: "proxy.local_password_file".into(),
                origin: "nowhere".into(),
                problem: "is not set, and neither is proxy.local_password_env, but --allow-remote \
                          serves non-loopback addresses, whose clients must authenticate"
                    .into(),
                fix: "set proxy.local_password_file (PGWI_PROXY__LOCAL_PASSWORD_FILE) or \
                      proxy.local_password_env (PGWI_PROXY__LOCAL_PASSWORD_ENV)"
                    .into(),
            });
        }
    };
    if password.is_empty() {
        return Err(reject(
            "proxy.local_password_file",
            "gives an empty password".into(),
            "put a password in it (clients give it as PGPASSWORD)",
        ));
    }
    Ok(password)
}

/// What the listeners, sessions and health endpoint share.
struct State {
    draining: AtomicBool,
    /// Connections being served (sessions, clients in their start-up, cancel requests).
    sessions: AtomicUsize,
    idle: Notify,
    /// Set at the drain deadline: open sessions are closed.
    close: watch::Sender<bool>,
    /// Set when the drain starts: listeners stop accepting.
    stop: watch::Sender<bool>,
    /// Whether the health endpoint may say why it is not ready (a loopback address: only this host asks).
    health_details: bool,
}

/// Counts an open connection; notifies when the last one ends.
struct SessionGuard(Arc<State>);

impl SessionGuard {
    fn new(state: &Arc<State>) -> Self {
        state.sessions.fetch_add(1, Ordering::SeqCst);
        Self(state.clone())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.0.sessions.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Removes a Unix socket file when the listener ends.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A bound listener and what its clients must prove.
struct Listener {
    socket: BoundSocket,
    /// Clients on it must prove the local password (and use TLS when a certificate is configured).
    remote: bool,
    /// Slots for clients in their start-up.
    pending: Arc<Semaphore>,
}

enum BoundSocket {
    Tcp(TcpListener),
    Unix(UnixListener, SocketFile),
}

async fn bind(listen: &Listen, remote: bool, mode: u32) -> anyhow::Result<(Listener, String)> {
    let (socket, actual) = match listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let actual = listener.local_addr()?.to_string();
            (BoundSocket::Tcp(listener), actual)
        }
        Listen::Unix(dir, port) => {
            let path = socket_path(dir, *port);
            remove_stale_socket(&path).await?;
            let (listener, file) = bind_unix(&path, mode)?;
            (
                BoundSocket::Unix(listener, file),
                path.display().to_string(),
            )
        }
    };
    let listener = Listener {
        socket,
        remote,
        pending: Arc::new(Semaphore::new(PENDING_PER_LISTENER)),
    };
    Ok((listener, actual))
}

/// A socket directory every user may write to (without the sticky bit, which keeps them from removing or
/// renaming others' files) would let any of them replace the socket with their own and receive the
/// clients meant for the proxy. A directory that does not exist is left to the bind's error.
fn check_socket_directory(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(dir) else {
        return Ok(());
    };
    let mode = meta.permissions().mode();
    if mode & 0o002 != 0 && mode & 0o1000 == 0 {
        return Err(format!(
            "names the socket directory {}, which every user may write to (mode {:04o}): any of them \
             could replace the socket with their own and receive the clients meant for the proxy",
            dir.display(),
            mode & 0o7777,
        ));
    }
    Ok(())
}

/// Removes the socket a proxy that did not exit cleanly left behind; refuses anything else at `path`.
async fn remove_stale_socket(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    anyhow::ensure!(
        meta.file_type().is_socket(),
        "{} exists and is not a socket: remove it or listen elsewhere",
        path.display()
    );
    anyhow::ensure!(
        tokio::net::UnixStream::connect(path).await.is_err(),
        "{} is in use by a running server: stop it or listen elsewhere",
        path.display()
    );
    std::fs::remove_file(path)
        .with_context(|| format!("removing the stale socket {}", path.display()))
}

/// Binds the socket with a umask that lets nobody but this user connect, then sets `mode`: no client can
/// connect in between with the wider permissions a plain bind would give.
fn bind_unix(path: &Path, mode: u32) -> anyhow::Result<(UnixListener, SocketFile)> {
    use rustix::fs::Mode;
    use std::os::unix::fs::PermissionsExt as _;
    let previous = rustix::process::umask(Mode::from_raw_mode(0o177));
    let bound = UnixListener::bind(path);
    rustix::process::umask(previous);
    let listener = bound.with_context(|| {
        format!(
            "listening on {} (the directory must exist and be writable)",
            path.display()
        )
    })?;
    let file = SocketFile(path.to_owned());
    // Who may connect gets a session as the identity: only whom proxy.socket_mode names.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
    Ok((listener, file))
}

/// What every connection of a listener is served with.
struct Served {
    proxy: Proxy,
    state: Arc<State>,
    secret: Option<Arc<LocalSecret>>,
    tls: Option<ClientTls>,
}

/// Accepts until the drain starts, whenever a start-up slot is free; each session runs until it ends or the
/// drain deadline closes it.
async fn accept_loop(listener: Listener, served: Served) {
    let mut stop = served.state.stop.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = accept_when_free(&listener, &served) => accepted,
        };
        let (stream, client) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // E.g. out of file descriptors: wait a little rather than spin.
                tracing::warn!(%error, "accepting a client failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let proxy = served.proxy.clone();
        let guard = SessionGuard::new(&served.state);
        let mut close = served.state.close.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = proxy.serve(stream, client) => {}
                _ = close.wait_for(|c| *c) => {}
            }
            drop(guard);
        });
    }
}

/// Waits for a start-up slot of the listener, then accepts a client holding it.
async fn accept_when_free(
    listener: &Listener,
    served: &Served,
) -> std::io::Result<(Stream, Client)> {
    let slot = listener
        .pending
        .clone()
        .acquire_owned()
        .await
        .map_err(std::io::Error::other)?;
    let (stream, mut client) = accept(listener, served).await?;
    client.admission = Some(slot);
    Ok((stream, client))
}

/// A client stream of either kind.
type Stream = Box<dyn ClientStream>;
trait ClientStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientStream for T {}

async fn accept(listener: &Listener, served: &Served) -> std::io::Result<(Stream, Client)> {
    match &listener.socket {
        BoundSocket::Tcp(socket) => {
            let (stream, peer) = socket.accept().await?;
            let _ = stream.set_nodelay(true);
            let mut client = Client::local(peer.to_string());
            client.tls = served.tls.clone();
            if listener.remote {
                client.local_secret = served.secret.clone();
                client.tls_required = served.tls.is_some();
            }
            Ok((Box::new(stream), client))
        }
        BoundSocket::Unix(socket, file) => {
            let (stream, _) = socket.accept().await?;
            let client = Client::local(format!("unix:{}", file.0.display()));
            Ok((Box::new(stream), client))
        }
    }
}

/// `GET /healthz` (readiness): 200 while listening with a usable token, 503 while draining or without one.
/// `GET /livez` (liveness): 200 while the process serves — also without a token and while draining, since a
/// restart would end every open session and bring no token sooner. The body says why, never a secret; on a
/// non-loopback address only ok or the kind of problem (no tenant, client id or path: the log has those).
/// At most [`HEALTH_REQUESTS_AT_ONCE`] are served at once.
async fn serve_healthz(listener: TcpListener, proxy: Proxy, state: Arc<State>) {
    let at_once = Arc::new(Semaphore::new(HEALTH_REQUESTS_AT_ONCE));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = at_once.clone().try_acquire_owned() else {
            continue;
        };
        let proxy = proxy.clone();
        let state = state.clone();
        tokio::spawn(async move {
            answer_health_request(stream, &proxy, &state).await;
            drop(slot);
        });
    }
}

/// Reads one request (within [`HEALTHZ_READ_TIMEOUT`] and 8 KiB) and answers it.
async fn answer_health_request(mut stream: tokio::net::TcpStream, proxy: &Proxy, state: &State) {
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    let read = tokio::time::timeout(HEALTHZ_READ_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let line = String::from_utf8_lossy(&request);
    let line = line.lines().next().unwrap_or_default();
    let is =
        |path: &str| line == format!("GET {path}") || line.starts_with(&format!("GET {path} "));
    let (status, body) = if is("/livez") {
        ("200 OK", liveness(state))
    } else if is("/healthz") {
        readiness(proxy, state)
    } else {
        (
            "404 Not Found",
            "not found: GET /healthz or GET /livez\n".to_owned(),
        )
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `/livez`'s body: what the proxy is doing (and how many connections it serves, on loopback).
fn liveness(state: &State) -> String {
    let doing = if state.draining.load(Ordering::SeqCst) {
        "draining"
    } else {
        "listening"
    };
    if !state.health_details {
        return format!("alive: {doing}\n");
    }
    let open = state.sessions.load(Ordering::SeqCst);
    format!("alive: {doing}; {open} open sessions\n")
}

/// `/healthz`'s status and body.
fn readiness(proxy: &Proxy, state: &State) -> (&'static str, String) {
    if state.draining.load(Ordering::SeqCst) {
        return (
            "503 Service Unavailable",
            "draining: not accepting new connections\n".to_owned(),
        );
    }
    match proxy.health() {
        Health::Ready { expires_at } if state.health_details => (
            "200 OK",
            format!(
                "ok: listening; token valid{}\n",
                expires_at
                    .map(|e| format!(" until {e}"))
                    .unwrap_or_default()
            ),
        ),
        Health::Ready { .. } => ("200 OK", "ok\n".to_owned()),
        Health::NoToken(why) if state.health_details => (
            "503 Service Unavailable",
            format!("no valid token: {why}\n"),
        ),
        Health::NoToken(_) => (
            "503 Service Unavailable",
            "no valid token (the proxy's log says why)\n".to_owned(),
        ),
    }
}

/// Waits for SIGTERM or SIGINT.
async fn termination() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Each session holds two file descriptors (client and upstream). The usual soft limit, 1024, would cap the
/// default 1000 clients near 500, so the soft limit is raised toward the hard one, as Go's runtime and
/// PostgreSQL's own servers do; a hard limit too low for `max_clients` is one warning saying how to fix it.
fn raise_open_files_limit(max_clients: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let needed = (max_clients as u64).saturating_mul(2).saturating_add(64);
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit.maximum.unwrap_or(u64::MAX);
    if soft >= needed {
        return;
    }
    let target = needed.min(hard);
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => tracing::debug!(from = soft, to = target, "raised the open-files limit"),
        Err(err) => tracing::warn!(%err, soft, "could not raise the open-files limit"),
    }
    if target < needed {
        tracing::warn!(
            max_clients,
            needed,
            hard_limit = hard,
            "proxy.max_clients needs about {needed} open files but the hard limit is {hard}: raise it \
             (ulimit -Hn, systemd LimitNOFILE, the container runtime's nofile) or lower proxy.max_clients"
        );
    }
}

/// `pgwi proxy`: serves until SIGTERM/SIGINT, then drains and exits 0.
pub async fn execute(sources: &ConfigSources, args: ProxyArgs) -> anyhow::Result<ExitCode> {
    let loaded = pgwi_core::config::load(sources)?;
    let settings = Settings::resolve(args, loaded.section("proxy")?, &loaded)?;
    let credential = SourceRegistry::default()
        .build_cached(&loaded.config.credential, &SourceContext::default())?;
    let options = ProxyOptions {
        startup_timeout: settings.startup_timeout,
        max_clients: settings.max_clients,
    };
    let proxy = Proxy::start_with(&loaded.config, credential, options).await?;
    let (stop, _) = watch::channel(false);
    let (close, _) = watch::channel(false);
    let state = Arc::new(State {
        draining: AtomicBool::new(false),
        sessions: AtomicUsize::new(0),
        idle: Notify::new(),
        close,
        stop,
        health_details: settings.healthz.is_some_and(|addr| addr.ip().is_loopback()),
    });
    raise_open_files_limit(settings.max_clients);
    let user = proxy.user().unwrap_or_default();
    let mut loops = Vec::new();
    for (listen, remote) in &settings.listen {
        let (listener, address) = bind(listen, *remote, settings.socket_mode).await?;
        tracing::info!(
            %address,
            upstream = %proxy.upstream(),
            %user,
            local_password = *remote,
            tls = if settings.tls.is_none() { "off" } else if *remote { "required" } else { "offered" },
            "listening"
        );
        let served = Served {
            proxy: proxy.clone(),
            state: state.clone(),
            secret: settings.local_secret.clone(),
            tls: settings.tls.clone(),
        };
        loops.push(tokio::spawn(accept_loop(listener, served)));
    }
    if let Some(addr) = settings.healthz {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("serving /healthz on {addr}"))?;
        tracing::info!(address = %listener.local_addr()?, "serving GET /healthz");
        tracing::info!(address = %listener.local_addr()?, "serving GET /livez");
        tokio::spawn(serve_healthz(listener, proxy.clone(), state.clone()));
    }

    let signal = termination().await?;
    state.draining.store(true, Ordering::SeqCst);
    let _ = state.stop.send(true);
    for accept in loops {
        // Each loop drops its listener (and removes its socket file) as it returns.
        let _ = accept.await;
    }
    let open = state.sessions.load(Ordering::SeqCst);
    tracing::info!(
        signal,
        open_sessions = open,
        drain_timeout_secs = settings.drain_timeout.as_secs(),
        "draining: not accepting new connections; open sessions may finish"
    );
    // A second signal (Ctrl-C again in a terminal) does not wait for the deadline.
    let unfinished = tokio::select! {
        drained = tokio::time::timeout(settings.drain_timeout, wait_idle(&state)) => {
            drained.is_err().then_some("the drain deadline was reached")
        }
        _ = termination() => Some("a second signal came"),
    };
    if let Some(reason) = unfinished {
        let open = state.sessions.load(Ordering::SeqCst);
        tracing::warn!(open_sessions = open, reason, "closing the open sessions");
        let _ = state.close.send(true);
        let _ = tokio::time::timeout(CLOSE_GRACE, wait_idle(&state)).await;
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

async fn wait_idle(state: &State) {
    loop {
        let idle = state.idle.notified();
        if state.sessions.load(Ordering::SeqCst) == 0 {
            return;
        }
        idle.await;
    }
}
