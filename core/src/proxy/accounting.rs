//! Session accounting: the one log line each connection gets when it ends, however it ends, and the byte
//! counts it reports.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::session::SessionError;

/// The one log line of a session, written when it ends however it ends.
pub(super) struct SessionLog {
    pub(super) client: String,
    pub(super) kind: &'static str,
    pub(super) database: Option<String>,
    pub(super) upstream_pid: Option<i32>,
    pub(super) started: Instant,
    pub(super) bytes_from_client: Arc<AtomicU64>,
    pub(super) bytes_from_server: Arc<AtomicU64>,
    pub(super) relaying: bool,
    /// Whether the client finished its start-up (failures before that are counted, not each warned).
    pub(super) started_up: bool,
    /// Why the proxy refused the connection, for [`crate::metrics::PROXY_REFUSALS`] (`None` before a step
    /// that can refuse it: a failure then is a bad start-up).
    pub(super) refusal: Option<&'static str>,
    /// Logged at debug: a connection that sent nothing, or a cancel request for no session (floods of
    /// either must not flood the log).
    pub(super) quiet: bool,
    pub(super) error: Option<SessionError>,
    /// Why the proxy ended the session at an idle point (`drain`, `token_expired`), if it did.
    pub(super) ended_by: Option<&'static str>,
}

impl SessionLog {
    pub(super) fn new(client: String) -> Self {
        Self {
            client,
            kind: "session",
            database: None,
            upstream_pid: None,
            started: Instant::now(),
            bytes_from_client: Arc::default(),
            bytes_from_server: Arc::default(),
            relaying: false,
            quiet: false,
            started_up: false,
            refusal: None,
            error: None,
            ended_by: None,
        }
    }
}

/// How often connections that failed before their start-up was done are summed up in one warning: each
/// is logged at debug only, since anyone who can connect could otherwise write the log at line rate.
const FAILED_START_UPS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Failed start-ups since the last warning, and when that was.
static FAILED_START_UPS: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

/// Counts a start-up that failed with `error`: the first is a warning, then one warning sums up the
/// failures of each [`FAILED_START_UPS_EVERY`] (when a failure comes after it has passed).
fn count_failed_start_up(error: &SessionError) {
    let mut counted = crate::connect::lock(&FAILED_START_UPS);
    let Some((since, failures)) = counted.as_mut() else {
        tracing::warn!(%error, "a connection failed before its start-up was done (the next are summed up every 10 s; each is logged at debug)");
        *counted = Some((Instant::now(), 0));
        return;
    };
    *failures += 1;
    if since.elapsed() >= FAILED_START_UPS_EVERY {
        tracing::warn!(
            failures = *failures,
            seconds = since.elapsed().as_secs(),
            last_error = %error,
            "connections failed before their start-up was done (each is logged at debug)"
        );
        *counted = Some((Instant::now(), 0));
    }
}

impl SessionLog {
    /// The session is logged in and relays from now on: counted as served and active.
    pub(super) fn start_relaying(&mut self) {
        self.relaying = true;
        metrics::counter!(crate::metrics::PROXY_SESSIONS, "outcome" => "served").increment(1);
        metrics::gauge!(crate::metrics::PROXY_SESSIONS_ACTIVE).increment(1);
    }

    /// The numbers of a connection that ends: an active session no more, or a refusal and why. Connections
    /// that sent nothing (port scans, TCP probes) and cancel requests (counted apart) are no sessions.
    fn record_end(&self, bytes_from_client: u64) {
        if self.relaying {
            metrics::gauge!(crate::metrics::PROXY_SESSIONS_ACTIVE).decrement(1);
            return;
        }
        if self.error.is_none() || self.kind != "session" || bytes_from_client == 0 {
            return;
        }
        let reason = self.refusal.unwrap_or("bad_startup");
        metrics::counter!(crate::metrics::PROXY_SESSIONS, "outcome" => "refused").increment(1);
        metrics::counter!(crate::metrics::PROXY_REFUSALS, "reason" => reason).increment(1);
    }
}

impl Drop for SessionLog {
    fn drop(&mut self) {
        let duration_ms = self.started.elapsed().as_millis() as u64;
        let bytes_from_client = self.bytes_from_client.load(Ordering::Relaxed);
        let bytes_from_server = self.bytes_from_server.load(Ordering::Relaxed);
        let database = self.database.as_deref().unwrap_or_default();
        let upstream_pid = self.upstream_pid.unwrap_or_default();
        self.record_end(bytes_from_client);
        let quiet = self.quiet || bytes_from_client == 0;
        match &self.error {
            Some(error) if quiet => tracing::debug!(
                client = %self.client, kind = self.kind, duration_ms, %error, "connection dropped"
            ),
            Some(error) if !self.started_up => {
                tracing::debug!(
                    client = %self.client, kind = self.kind, duration_ms, bytes_from_client, %error,
                    "connection dropped"
                );
                count_failed_start_up(error);
            }
            // A session that was relaying ends with the connection: not the proxy's failure.
            Some(error) if !self.relaying => tracing::warn!(
                client = %self.client, kind = self.kind, database, upstream_pid, duration_ms,
                bytes_from_client, bytes_from_server, %error, "connection refused"
            ),
            Some(error) => tracing::info!(
                client = %self.client, kind = self.kind, database, upstream_pid, duration_ms,
                bytes_from_client, bytes_from_server, %error, "connection ended"
            ),
            None => tracing::info!(
                client = %self.client, kind = self.kind, database, upstream_pid, duration_ms,
                bytes_from_client, bytes_from_server, ended_by = self.ended_by, "connection ended"
            ),
        }
    }
}

/// Counts the bytes read from and written to a stream (shared counters: the log reads them even when the
/// session is dropped midway).
pub(super) struct Counted<S> {
    pub(super) inner: S,
    pub(super) read: Arc<AtomicU64>,
    pub(super) written: Arc<AtomicU64>,
    /// [`crate::metrics::PROXY_BYTES`] `from_client` and `from_server`, looked up once per session.
    pub(super) metrics: (metrics::Counter, metrics::Counter),
}

impl<S> Counted<S> {
    /// Counts `inner`'s bytes into `read` and `written` (and the proxy's byte counters).
    pub(super) fn new(inner: S, read: Arc<AtomicU64>, written: Arc<AtomicU64>) -> Self {
        let direction =
            |d: &'static str| metrics::counter!(crate::metrics::PROXY_BYTES, "direction" => d);
        Self {
            inner,
            read,
            written,
            metrics: (direction("from_client"), direction("from_server")),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let read = (buf.filled().len() - before) as u64;
        this.read.fetch_add(read, Ordering::Relaxed);
        this.metrics.0.increment(read);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &poll {
            this.written.fetch_add(*n as u64, Ordering::Relaxed);
            this.metrics.1.increment(*n as u64);
        }
        poll
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
