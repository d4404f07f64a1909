//! `pgwi proxy`: a local PostgreSQL endpoint for psql, Python, Go, `pg_dump` — any client — that logs in to
//! the configured server with a fresh token per session ([`pgwi_core::proxy`] serves each session; this
//! module owns the listeners, the `[proxy]` configuration section, `/healthz` and `/livez`, the cap on
//! concurrent clients, and the drain on SIGTERM).
//!
//! Loopback addresses and Unix socket directories only, unless `--allow-remote` with a local password that
//! clients on the non-loopback listeners must prove (SCRAM-SHA-256); never an open door on the network.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use pgwi_core::ConfigError;
use pgwi_core::config::{ConfigSources, LoadedConfig};
use pgwi_core::proxy::{Client, Health, LocalSecret, Proxy};
use pgwi_credentials::{SourceContext, SourceRegistry};
use serde::Deserialize as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{Notify, watch};

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
const DEFAULT_MAX_CLIENTS: usize = 1000;
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
    /// How many clients may be connected at once; one more gets PostgreSQL's "too many clients" (53300)
    /// [default: 1000; config: proxy.max_clients]
    #[arg(long, value_name = "N")]
    pub max_clients: Option<usize>,
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
        let healthz = match args.healthz.or(section.healthz) {
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
        let (mode_text, mode_origin) = match (args.socket_mode, section.socket_mode) {
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
        Ok(Self {
            listen: parsed,
            healthz,
            max_clients,
            socket_mode,
            drain_timeout: Duration::from_secs(
                args.drain_timeout_secs
                    .unwrap_or(section.drain_timeout_secs),
            ),
            local_secret,
        })
    }
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
    sessions: AtomicUsize,
    idle: Notify,
    /// Set at the drain deadline: open sessions are closed.
    close: watch::Sender<bool>,
    /// Set when the drain starts: listeners stop accepting.
    stop: watch::Sender<bool>,
}

/// Counts an open session; notifies when the last one ends.
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

enum Bound {
    Tcp(TcpListener, bool),
    Unix(UnixListener, SocketFile),
}

async fn bind(listen: &Listen, remote: bool, mode: u32) -> anyhow::Result<(Bound, String)> {
    match listen {
        Listen::Tcp(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let actual = listener.local_addr()?.to_string();
            Ok((Bound::Tcp(listener, remote), actual))
        }
        Listen::Unix(dir, port) => {
            use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
            let path = socket_path(dir, *port);
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                anyhow::ensure!(
                    meta.file_type().is_socket(),
                    "{} exists and is not a socket: remove it or listen elsewhere",
                    path.display()
                );
                anyhow::ensure!(
                    tokio::net::UnixStream::connect(&path).await.is_err(),
                    "{} is in use by a running server: stop it or listen elsewhere",
                    path.display()
                );
                // A stale socket of a proxy that did not exit cleanly.
                std::fs::remove_file(&path)
                    .with_context(|| format!("removing the stale socket {}", path.display()))?;
            }
            let listener = UnixListener::bind(&path).with_context(|| {
                format!(
                    "listening on {} (the directory must exist and be writable)",
                    path.display()
                )
            })?;
            // Who may connect gets a session as the identity: only whom proxy.socket_mode names.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting mode {mode:o} on {}", path.display()))?;
            let actual = path.display().to_string();
            Ok((Bound::Unix(listener, SocketFile(path)), actual))
        }
    }
}

/// Accepts until the drain starts; each session runs until it ends or the drain deadline closes it.
async fn accept_loop(
    bound: Bound,
    proxy: Proxy,
    state: Arc<State>,
    secret: Option<Arc<LocalSecret>>,
    max_clients: usize,
) {
    let mut stop = state.stop.subscribe();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            accepted = accept(&bound, secret.as_ref()) => accepted,
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
        let proxy = proxy.clone();
        if state.sessions.load(Ordering::SeqCst) >= max_clients {
            // Not counted as a session: it ends within seconds, and the drain need not wait for it.
            tokio::spawn(async move { proxy.turn_away(stream, client, max_clients).await });
            continue;
        }
        let guard = SessionGuard::new(&state);
        let mut close = state.close.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                () = proxy.serve(stream, client) => {}
                _ = close.wait_for(|c| *c) => {}
            }
            drop(guard);
        });
    }
}

/// A client stream of either kind.
type Stream = Box<dyn ClientStream>;
trait ClientStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientStream for T {}

async fn accept(
    bound: &Bound,
    secret: Option<&Arc<LocalSecret>>,
) -> std::io::Result<(Stream, Client)> {
    match bound {
        Bound::Tcp(listener, remote) => {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((
                Box::new(stream),
                Client {
                    address: peer.to_string(),
                    local_secret: secret.filter(|_| *remote).cloned(),
                },
            ))
        }
        Bound::Unix(listener, file) => {
            let (stream, _) = listener.accept().await?;
            Ok((
                Box::new(stream),
                Client {
                    address: format!("unix:{}", file.0.display()),
                    local_secret: None,
                },
            ))
        }
    }
}

/// `GET /healthz` (readiness): 200 while listening with a usable token, 503 while draining or without one.
/// `GET /livez` (liveness): 200 while the process serves — also without a token and while draining, since a
/// restart would end every open session and bring no token sooner. The body says why, never a secret.
async fn serve_healthz(listener: TcpListener, proxy: Proxy, state: Arc<State>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let proxy = proxy.clone();
        let state = state.clone();
        tokio::spawn(async move {
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
            let is = |path: &str| {
                line == format!("GET {path}") || line.starts_with(&format!("GET {path} "))
            };
            let (status, body) = if is("/livez") {
                let open = state.sessions.load(Ordering::SeqCst);
                let doing = if state.draining.load(Ordering::SeqCst) {
                    "draining"
                } else {
                    "listening"
                };
                ("200 OK", format!("alive: {doing}; {open} open sessions\n"))
            } else if !is("/healthz") {
                (
                    "404 Not Found",
                    "not found: GET /healthz or GET /livez\n".to_owned(),
                )
            } else if state.draining.load(Ordering::SeqCst) {
                (
                    "503 Service Unavailable",
                    "draining: not accepting new connections\n".to_owned(),
                )
            } else {
                match proxy.health() {
                    Health::Ready { expires_at } => (
                        "200 OK",
                        format!(
                            "ok: listening; token valid{}\n",
                            expires_at
                                .map(|e| format!(" until {e}"))
                                .unwrap_or_default()
                        ),
                    ),
                    Health::NoToken(why) => (
                        "503 Service Unavailable",
                        format!("no valid token: {why}\n"),
                    ),
                }
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
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
    let proxy = Proxy::start(&loaded.config, credential).await?;
    let (stop, _) = watch::channel(false);
    let (close, _) = watch::channel(false);
    let state = Arc::new(State {
        draining: AtomicBool::new(false),
        sessions: AtomicUsize::new(0),
        idle: Notify::new(),
        close,
        stop,
    });
    raise_open_files_limit(settings.max_clients);
    let user = proxy.user().unwrap_or_default();
    let mut loops = Vec::new();
    for (listen, remote) in &settings.listen {
        let (bound, address) = bind(listen, *remote, settings.socket_mode).await?;
        tracing::info!(
            %address,
            upstream = %proxy.upstream(),
            %user,
            local_password = *remote,
            "listening"
        );
        let secret = settings.local_secret.clone();
        loops.push(tokio::spawn(accept_loop(
            bound,
            proxy.clone(),
            state.clone(),
            secret,
            settings.max_clients,
        )));
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
