//! The proxy server: listeners (TCP and Unix sockets), each with its own budget of clients in their
//! start-up, the health endpoints, the open-files limit, the optional connection test before serving, and
//! the stop: a minimum delay still accepting (rolling updates), then a drain that follows transactions. `pgwi proxy` maps its
//! configuration and flags onto [`ProxyServer`]; a Rust program embeds the same server in a few lines
//! (`core/examples/proxy.rs`).
//!
//! Clients still in their start-up hold one of their listener's [`PENDING_PER_LISTENER`] slots for at most
//! the start-up timeout; while all are taken, that listener accepts no more (new connections wait in the
//! kernel's backlog, as a burst of real clients does for a moment), so a flood of silent connections on
//! one listener leaves the others served, and the work an attacker can cause is bounded on every path.
//! Non-loopback TCP listeners need a local password ([`ProxyServer::remote_password`]): the server never
//! serves the network without authentication.

mod health;
mod listen;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

pub use listen::{Listen, check_socket_directory};

use super::{Admission, Client, ClientTls, LocalSecret, Proxy};
use listen::{BoundSocket, Listener};

/// Clients in their start-up (TLS, start-up message, local password) at once on one listener.
pub const PENDING_PER_LISTENER: usize = 64;
/// Clients in their start-up at once from one address on a remote listener: one host cannot take all of its
/// listener's slots; beyond this its connections are closed at once.
pub const PENDING_PER_PEER: usize = 8;
/// The default mode of Unix socket files: the proxy's own OS user only (a socket gives a session as the
/// identity without a password; unlike PostgreSQL's 0777, which authenticates each client itself).
pub const DEFAULT_SOCKET_MODE: u32 = 0o700;
/// The default time open sessions get after a stop is requested.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// After the drain deadline, how long closed sessions get to finish logging.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How the server's stop goes; [`Default`] gives the documented defaults.
#[derive(Debug, Clone)]
pub struct StopOptions {
    /// After a stop is requested, how long the listeners still accept new clients (readiness already
    /// reports 503), so clients a rolling update still routes here are served. Default 0.
    pub min_delay: Duration,
    /// Then, how long sessions get to reach an idle point (each is ended at its first: at once when idle,
    /// after its transaction otherwise) before what is left is cut ([`DEFAULT_DRAIN_TIMEOUT`]).
    pub drain_timeout: Duration,
}

impl Default for StopOptions {
    fn default() -> Self {
        Self {
            min_delay: Duration::ZERO,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
        }
    }
}

/// Why the server could not start (secret-free; names the address or path).
#[derive(Debug, thiserror::Error)]
pub enum ProxyServerError {
    /// A non-loopback TCP listener without a local password for its clients.
    #[error(
        "{address} is not a loopback address, and no local password is set for its clients: anyone who \
         reaches it would get a session logged in with the identity's token"
    )]
    RemoteWithoutPassword {
        /// The listener.
        address: SocketAddr,
    },
    /// The login before serving failed (`ProxyServer::test_connection_first`).
    #[error(transparent)]
    ConnectionTest(#[from] super::ConnectionTestError),
    /// A socket directory every user may write to.
    #[error("{0}")]
    SocketDirectory(String),
    /// Binding or preparing a listener failed.
    #[error("listening on {address}: {detail}")]
    Listen {
        /// The address or socket path.
        address: String,
        /// What failed.
        detail: String,
    },
}

/// A proxy server to be bound: the [`Proxy`] that serves each session, and where and how to listen.
///
/// ```no_run
/// # async fn run(proxy: pgwi_core::proxy::Proxy) -> Result<(), Box<dyn std::error::Error>> {
/// use pgwi_core::proxy::server::{Listen, ProxyServer};
///
/// let server = ProxyServer::new(proxy)
///     .listen(Listen::Tcp("127.0.0.1:6432".parse()?))
///     .bind()
///     .await?;
/// server.serve(async { let _ = tokio::signal::ctrl_c().await; }, std::future::pending()).await;
/// # Ok(())
/// # }
/// ```
pub struct ProxyServer {
    proxy: Proxy,
    listen: Vec<Listen>,
    remote_password: Option<Arc<LocalSecret>>,
    tls: Option<ClientTls>,
    health: Option<SocketAddr>,
    metrics: Option<MetricsRender>,
    stop: StopOptions,
    socket_mode: u32,
    quit_endpoint: bool,
    test_connection: bool,
}

/// Renders the application's metrics for `GET /metrics` (e.g. a Prometheus recorder's handle's `render`).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

impl std::fmt::Debug for ProxyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyServer")
            .field("proxy", &self.proxy)
            .field("listen", &self.listen)
            .field("tls", &self.tls.is_some())
            .field("health", &self.health)
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

impl ProxyServer {
    /// A server for `proxy`, listening nowhere yet.
    pub fn new(proxy: Proxy) -> Self {
        Self {
            proxy,
            listen: Vec::new(),
            remote_password: None,
            tls: None,
            health: None,
            metrics: None,
            stop: StopOptions::default(),
            socket_mode: DEFAULT_SOCKET_MODE,
            quit_endpoint: false,
            test_connection: false,
        }
    }

    /// Adds a listener.
    pub fn listen(mut self, listen: Listen) -> Self {
        self.listen.push(listen);
        self
    }

    /// The password clients of non-loopback TCP listeners must prove (SCRAM-SHA-256; -PLUS over TLS).
    pub fn remote_password(mut self, secret: Arc<LocalSecret>) -> Self {
        self.remote_password = Some(secret);
        self
    }

    /// TLS for the client hop: offered on every TCP listener, required on non-loopback ones.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Serves `GET /healthz` (readiness), `GET /livez` (liveness) and `GET /startup` (200 once serving) on
    /// `address`.
    pub fn health(mut self, address: SocketAddr) -> Self {
        self.health = Some(address);
        self
    }

    /// Also serves `GET /metrics` on the health address, with what `render` returns (Prometheus' text
    /// format: pgwi-core records through the `metrics` facade, the application installs the recorder).
    pub fn metrics(mut self, render: MetricsRender) -> Self {
        self.metrics = Some(render);
        self
    }

    /// How long sessions get to reach an idle point once the drain begins ([`DEFAULT_DRAIN_TIMEOUT`]).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.stop.drain_timeout = timeout;
        self
    }

    /// How long the listeners go on accepting after a stop is requested, before the drain (default 0).
    pub fn min_stop_delay(mut self, delay: Duration) -> Self {
        self.stop.min_delay = delay;
        self
    }

    /// Also answers `POST /quitquitquit` on the health address, from loopback clients only (a pod's own
    /// containers): the same graceful stop as the `stop` future of [`BoundProxyServer::serve`].
    pub fn quit_endpoint(mut self, enabled: bool) -> Self {
        self.quit_endpoint = enabled;
        self
    }

    /// Logs in to the server once ([`Proxy::test_connection`]) before the listeners are bound; [`Self::bind`]
    /// fails with what a client would have been told if that login fails.
    pub fn test_connection_first(mut self, enabled: bool) -> Self {
        self.test_connection = enabled;
        self
    }

    /// The permission bits of Unix socket files ([`DEFAULT_SOCKET_MODE`]).
    pub fn socket_mode(mut self, mode: u32) -> Self {
        self.socket_mode = mode;
        self
    }

    /// Binds the health endpoint (`/startup` answering 503 until the end of this call), runs the connection
    /// test if asked, binds every listener and starts accepting; serve with [`BoundProxyServer::serve`].
    /// Raises the open-files limit for the proxy's `max_clients` first.
    pub async fn bind(self) -> Result<BoundProxyServer, ProxyServerError> {
        for listen in &self.listen {
            if let Listen::Tcp(address) = listen
                && !address.ip().is_loopback()
                && self.remote_password.is_none()
            {
                return Err(ProxyServerError::RemoteWithoutPassword { address: *address });
            }
        }
        raise_open_files_limit(self.proxy.options().max_clients, self.listen.len());
        let state = Arc::new(ServerState {
            started: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            accepting: AtomicBool::new(true),
            sessions: AtomicUsize::new(0),
            idle: Notify::new(),
            close: watch::channel(false).0,
            stop: watch::channel(false).0,
            quit: watch::channel(false).0,
            quit_endpoint: self.quit_endpoint,
            health_details: self.health.is_some_and(|addr| addr.ip().is_loopback()),
            metrics: self.metrics.clone(),
        });
        let health = match self.health {
            Some(address) => Some(health::start(address, self.proxy.clone(), state.clone()).await?),
            None => None,
        };
        let bound = self.bind_listeners(&state).await;
        if bound.is_err()
            && let Some((_, task)) = &health
        {
            task.abort();
        }
        let (loops, addresses) = bound?;
        state.started.store(true, Ordering::SeqCst);
        Ok(BoundProxyServer {
            proxy: self.proxy,
            state,
            loops,
            addresses,
            health,
            stop: self.stop,
        })
    }

    /// The connection test if asked, then each listener bound with its accept loop running.
    async fn bind_listeners(
        &self,
        state: &Arc<ServerState>,
    ) -> Result<(Vec<tokio::task::JoinHandle<()>>, Vec<String>), ProxyServerError> {
        if self.test_connection {
            self.proxy.test_connection().await?;
            tracing::info!(
                upstream = %self.proxy.upstream(),
                database = self.proxy.database().unwrap_or_default(),
                "the connection test logged in"
            );
        }
        let mut addresses = Vec::new();
        let mut loops = Vec::new();
        for listen in &self.listen {
            let (listener, address) = listen::bind(listen, self.socket_mode).await?;
            self.log_listening(&listener, &address);
            let served = Served {
                proxy: self.proxy.clone(),
                state: state.clone(),
                secret: self.remote_password.clone(),
                tls: self.tls.clone(),
            };
            loops.push(tokio::spawn(accept_loop(listener, served)));
            addresses.push(address);
        }
        Ok((loops, addresses))
    }

    fn log_listening(&self, listener: &Listener, address: &str) {
        let tls = match (&self.tls, listener.remote) {
            (None, _) => "off",
            (Some(_), true) => "required",
            (Some(_), false) => "offered",
        };
        tracing::info!(
            %address,
            upstream = %self.proxy.upstream(),
            user = %self.proxy.user().unwrap_or_default(),
            local_password = listener.remote,
            tls,
            "listening"
        );
    }
}

/// A server whose listeners are bound and accepting.
pub struct BoundProxyServer {
    proxy: Proxy,
    state: Arc<ServerState>,
    loops: Vec<tokio::task::JoinHandle<()>>,
    addresses: Vec<String>,
    health: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
    stop: StopOptions,
}

impl std::fmt::Debug for BoundProxyServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundProxyServer")
            .field("addresses", &self.addresses)
            .field("health", &self.health_address())
            .finish_non_exhaustive()
    }
}

impl BoundProxyServer {
    /// Where clients connect: `HOST:PORT` or a socket file's path, in the order the listeners were added.
    pub fn addresses(&self) -> &[String] {
        &self.addresses
    }

    /// Where the health endpoint listens.
    pub fn health_address(&self) -> Option<SocketAddr> {
        self.health.as_ref().map(|(address, _)| *address)
    }

    /// Serves until `stop` completes (or `POST /quitquitquit`, when enabled), then stops: readiness reports
    /// 503 at once, the listeners accept for the minimum delay still, then stop accepting while every
    /// session is ended at its next idle point (57P01; a transaction finishes first); what is left at the
    /// drain timeout is cut. Returns as soon as no session is left. `hurry` (polled once the stop has begun,
    /// e.g. a second Ctrl-C) skips what remains of the delay and the drain.
    pub async fn serve(mut self, stop: impl Future<Output = ()>, hurry: impl Future<Output = ()>) {
        let mut quit = self.state.quit.subscribe();
        tokio::select! {
            () = stop => {}
            _ = quit.wait_for(|quit| *quit) => tracing::info!("stopping: POST /quitquitquit"),
        }
        let state = self.state.clone();
        state.draining.store(true, Ordering::SeqCst);
        let mut hurry = std::pin::pin!(hurry);
        let mut hurried = false;
        if !self.stop.min_delay.is_zero() {
            tracing::info!(
                min_delay_secs = self.stop.min_delay.as_secs_f32(),
                open_sessions = state.sessions.load(Ordering::SeqCst),
                "stop requested: still accepting new connections for the minimum delay, then draining"
            );
            tokio::select! {
                () = tokio::time::sleep(self.stop.min_delay) => {}
                () = hurry.as_mut() => hurried = true,
            }
        }
        self.stop_accepting().await;
        self.proxy.end_sessions_when_idle();
        tracing::info!(
            open_sessions = state.sessions.load(Ordering::SeqCst),
            drain_timeout_secs = self.stop.drain_timeout.as_secs(),
            "draining: not accepting new connections; idle sessions end now, sessions in a transaction \
             when it ends"
        );
        let unfinished = if hurried {
            Some("a second stop request came")
        } else {
            tokio::select! {
                drained = tokio::time::timeout(self.stop.drain_timeout, wait_idle(&state)) => {
                    drained.is_err().then_some("the drain deadline was reached")
                }
                () = hurry => Some("a second stop request came"),
            }
        };
        if let Some(reason) = unfinished {
            let open = state.sessions.load(Ordering::SeqCst);
            tracing::warn!(open_sessions = open, reason, "closing the open sessions");
            // `send_replace` stores the value even while no session subscribes (`send` would drop it).
            state.close.send_replace(true);
            let _ = tokio::time::timeout(CLOSE_GRACE, wait_idle(&state)).await;
        }
        if let Some((_, health)) = &self.health {
            health.abort();
        }
        tracing::info!("stopped");
    }

    /// Ends every accept loop (each drops its listener and removes its socket file as it returns).
    async fn stop_accepting(&mut self) {
        // Stored even before an accept loop has subscribed: with `send`, a loop not yet polled (a command
        // that failed at once under `pgwi exec`) would subscribe after the value was dropped and never stop.
        self.state.stop.send_replace(true);
        for accept in std::mem::take(&mut self.loops) {
            let _ = accept.await;
        }
        self.state.accepting.store(false, Ordering::SeqCst);
    }
}

/// What the listeners, sessions and health endpoint share.
pub(super) struct ServerState {
    /// Set once the listeners are bound (and the connection test, if asked, passed): `GET /startup`.
    pub(super) started: AtomicBool,
    /// Set when a stop is requested: readiness reports 503 from then on.
    pub(super) draining: AtomicBool,
    /// Whether the listeners still accept (also during the minimum delay after a stop request).
    pub(super) accepting: AtomicBool,
    /// Connections being served (sessions, clients in their start-up, cancel requests).
    pub(super) sessions: AtomicUsize,
    idle: Notify,
    /// Set at the drain deadline: open sessions are closed.
    close: watch::Sender<bool>,
    /// Set when the drain starts: listeners stop accepting.
    stop: watch::Sender<bool>,
    /// Set by `POST /quitquitquit`: the same stop as the caller's.
    pub(super) quit: watch::Sender<bool>,
    /// Whether `POST /quitquitquit` is answered.
    pub(super) quit_endpoint: bool,
    /// Whether the health endpoint may say why it is not ready (a loopback address: only this host asks).
    pub(super) health_details: bool,
    /// What `GET /metrics` serves, if anything.
    pub(super) metrics: Option<MetricsRender>,
}

/// Counts an open connection; notifies when the last one ends.
struct SessionGuard(Arc<ServerState>);

impl SessionGuard {
    fn new(state: &Arc<ServerState>) -> Self {
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

/// What every connection of a listener is served with.
struct Served {
    proxy: Proxy,
    state: Arc<ServerState>,
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

/// Waits for a start-up slot of the listener, then accepts a client holding it (and, on a remote listener,
/// one of its address's slots: a client from an address that has none left is closed at once).
async fn accept_when_free(
    listener: &Listener,
    served: &Served,
) -> std::io::Result<(Stream, Client)> {
    loop {
        let slot = listener
            .pending
            .clone()
            .acquire_owned()
            .await
            .map_err(std::io::Error::other)?;
        let (stream, mut client, peer) = accept(listener, served).await?;
        let peer_slot = match peer.filter(|_| listener.remote) {
            Some(ip) => match PeerSlot::take(&listener.peers, ip) {
                Some(peer_slot) => Some(peer_slot),
                None => {
                    tracing::debug!(client = %client.address, "connection closed at once: its address has {PENDING_PER_PEER} clients in their start-up");
                    continue;
                }
            },
            None => None,
        };
        client.admission = Some(Admission {
            _listener: slot,
            _peer: peer_slot,
        });
        return Ok((stream, client));
    }
}

/// Clients in their start-up per address, on one remote listener.
pub(super) type PeerCounts =
    Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

/// One of an address's start-up slots; given back when dropped.
#[derive(Debug)]
pub struct PeerSlot {
    counts: PeerCounts,
    ip: std::net::IpAddr,
}

impl PeerSlot {
    /// A slot for `ip`, unless it holds [`PENDING_PER_PEER`] already.
    fn take(counts: &PeerCounts, ip: std::net::IpAddr) -> Option<Self> {
        let mut map = crate::connect::lock(counts);
        let held = map.entry(ip).or_insert(0);
        if *held >= PENDING_PER_PEER {
            return None;
        }
        *held += 1;
        Some(Self {
            counts: counts.clone(),
            ip,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = crate::connect::lock(&self.counts);
        if let Some(held) = map.get_mut(&self.ip) {
            *held -= 1;
            if *held == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A client stream of either kind.
type Stream = Box<dyn ClientStream>;
trait ClientStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> ClientStream for T {}

/// Accepts one client: its stream, how it is served, and its address (TCP only).
async fn accept(
    listener: &Listener,
    served: &Served,
) -> std::io::Result<(Stream, Client, Option<std::net::IpAddr>)> {
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
            Ok((Box::new(stream), client, Some(peer.ip())))
        }
        #[cfg(unix)]
        BoundSocket::Unix(socket, file) => {
            let (stream, _) = socket.accept().await?;
            let client = Client::local(format!("unix:{}", file.0.display()));
            Ok((Box::new(stream), client, None))
        }
    }
}

/// Each session holds two file descriptors (client and upstream), each client in its start-up one, and the
/// health endpoint and forwarded cancels a few more. The usual soft limit, 1024, would cap the default 1000
/// clients near 500, so the soft limit is raised toward the hard one, as Go's runtime and PostgreSQL's own
/// servers do; a hard limit too low for `max_clients` is one warning saying how to fix it.
#[cfg(unix)]
fn raise_open_files_limit(max_clients: usize, listeners: usize) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let pending = (listeners * PENDING_PER_LISTENER) as u64;
    let needed = (max_clients as u64)
        .saturating_mul(2)
        .saturating_add(pending)
        .saturating_add(health::REQUESTS_AT_ONCE as u64 + 64);
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
            "a cap of {max_clients} clients needs about {needed} open files but the hard limit is {hard}: \
             raise it (ulimit -Hn, systemd LimitNOFILE, the container runtime's nofile) or lower the cap"
        );
    }
}

/// Windows has no such per-process limit on sockets.
#[cfg(not(unix))]
fn raise_open_files_limit(_max_clients: usize, _listeners: usize) {}

async fn wait_idle(state: &ServerState) {
    loop {
        let idle = state.idle.notified();
        if state.sessions.load(Ordering::SeqCst) == 0 {
            return;
        }
        idle.await;
    }
}
