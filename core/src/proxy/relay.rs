//! Relaying a logged-in session: bytes both ways, untouched, while the message boundaries of each
//! direction are followed (a 5-byte header scan per message, nothing copied) so the proxy knows the
//! session's *idle points*: every query the client sent has had its `ReadyForQuery`, that one said the
//! session is outside a transaction (`I`), and neither direction is in the middle of a message.
//!
//! When the session is asked to end ([`EndReason`]: the drain after a stop request, or the token it logged in
//! with has expired), it ends at its first idle point, as PostgreSQL ends an idle backend on
//! `pg_terminate_backend`: the client gets `FATAL 57P01 terminating connection due to administrator
//! command` (libpq and every driver treat it as a lost connection to reconnect), the server a `Terminate`.
//! A transaction in progress is never cut here: it commits or rolls back as its client says, and the
//! session ends at the `ReadyForQuery` after it. Only the drain deadline cuts (`server.rs`).
//!
//! The decision and the forwarding run in one task, so they cannot race: a client's `Query` read before
//! the decision is counted before it is forwarded, and keeps the session busy until its `ReadyForQuery`.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};

use crate::protocol;

/// Bytes buffered per direction: one TLS record's worth of plaintext, so a full read becomes one record.
const BUFFER_SIZE: usize = 16 * 1024;
/// How long the last bytes of an ending session may take to reach each side.
const FAREWELL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The SQLSTATE and words PostgreSQL uses when it ends a session on an administrator's request.
pub(crate) const ADMIN_SHUTDOWN: &str = "57P01";
const ADMIN_SHUTDOWN_MESSAGE: &str = "terminating connection due to administrator command";

/// Why the proxy ends a session at its next idle point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EndReason {
    /// The proxy is stopping (SIGTERM, `POST /quitquitquit`), after its minimum delay.
    Drain,
    /// The token the session logged in with has expired (`proxy.end_sessions_after_token_expiry`).
    TokenExpired,
}

impl EndReason {
    /// The label of `pgwi_proxy_sessions_ended_total` and the log.
    pub(crate) fn label(self) -> &'static str {
        match self {
            EndReason::Drain => "drain",
            EndReason::TokenExpired => "token_expired",
        }
    }

    /// The `ErrorResponse` the client gets.
    fn error_response(self) -> Vec<u8> {
        let hint = match self {
            EndReason::Drain => {
                "pgwi proxy is stopping and ends idle sessions; connect again (to another instance, or \
                 to this one once it is back)"
            }
            EndReason::TokenExpired => {
                "the access token this session logged in with has expired, and pgwi proxy ends such \
                 sessions at their first idle point (proxy.end_sessions_after_token_expiry): connect \
                 again to log in with a fresh token"
            }
        };
        protocol::error_response(&[
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', ADMIN_SHUTDOWN),
            (b'M', ADMIN_SHUTDOWN_MESSAGE),
            (b'H', hint),
        ])
    }
}

/// How a relayed session ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RelayEnd {
    /// A side closed its connection (the client's `Terminate`, or either side's end of stream).
    Closed,
    /// The proxy ended it at an idle point.
    Ended(EndReason),
}

/// Relays between `client` and `upstream` until either side closes, or until `end` completes and the
/// session then reaches an idle point; the session starts idle (just after the login's `ReadyForQuery`).
pub(crate) async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    end: impl Future<Output = EndReason>,
) -> io::Result<RelayEnd>
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut end = std::pin::pin!(end);
    // The login's last message was the server's ReadyForQuery 'I'.
    let mut relay = Relay::default();
    relay.conversation.transaction = Some(b'I');
    let reason = std::future::poll_fn(|cx| relay.poll(cx, client, upstream, end.as_mut())).await?;
    let Some(reason) = reason else {
        // A side closed: the server gets what was forwarded and the end of the stream (a TLS
        // close_notify), within a deadline; the client's connection is closed by the session.
        let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
            upstream.flush().await?;
            upstream.shutdown().await
        })
        .await;
        return Ok(RelayEnd::Closed);
    };
    // Both directions are at a message boundary with nothing left to forward. The server first, so a
    // client that no longer reads cannot keep its backend.
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
        upstream.write_all(&protocol::terminate()).await?;
        upstream.shutdown().await
    })
    .await;
    let _ = tokio::time::timeout(FAREWELL_TIMEOUT, async {
        client.write_all(&reason.error_response()).await?;
        client.flush().await
    })
    .await;
    Ok(RelayEnd::Ended(reason))
}

/// Both directions of a session and what the proxy knows of its state.
#[derive(Default)]
struct Relay {
    from_client: Direction,
    from_server: Direction,
    conversation: Conversation,
    /// Set once the session is to end at its next idle point.
    ending: Option<EndReason>,
}

/// What the messages that passed say about the session: what the client still awaits, and whether a
/// transaction is open.
#[derive(Default)]
struct Conversation {
    /// `Query`, `Sync` and `FunctionCall` messages sent whose `ReadyForQuery` has not come back.
    awaiting_ready: u64,
    /// Extended-protocol messages sent since the last `Sync` (a pipeline the client has not closed).
    open_pipeline: bool,
    /// `Sync`s sent since the last `Query`, `Execute`, `CopyDone` or `CopyFail`: if the command before them
    /// starts a COPY FROM STDIN, the server swallows them (it ignores `Sync` during COPY-in).
    syncs_since_command: u64,
    /// Between the server's `CopyInResponse` (or `CopyBothResponse`) and the client's `CopyDone` or
    /// `CopyFail`: the client's `Sync` and `Flush` are ignored by the server then.
    copy_in: bool,
    /// The transaction status of the last `ReadyForQuery` (`I` idle, `T` in a transaction, `E` failed one).
    transaction: Option<u8>,
}

impl Conversation {
    /// A message the client sent begins (counted before any of it is forwarded).
    fn client_sent(&mut self, tag: u8) {
        match tag {
            // Each is answered by exactly one ReadyForQuery.
            b'Q' | b'F' => {
                self.awaiting_ready += 1;
                self.syncs_since_command = 0;
            }
            b'S' | b'H' if self.copy_in => {}
            b'S' => {
                self.awaiting_ready += 1;
                self.syncs_since_command += 1;
                self.open_pipeline = false;
            }
            b'E' => {
                self.open_pipeline = true;
                self.syncs_since_command = 0;
            }
            // Parse, Bind, Describe, Close, Flush: answered at the next Sync.
            b'P' | b'B' | b'D' | b'C' | b'H' => self.open_pipeline = true,
            b'c' | b'f' => {
                self.copy_in = false;
                self.syncs_since_command = 0;
            }
            _ => {}
        }
    }

    /// What the server sent.
    fn server_sent(&mut self, event: Event) {
        match event {
            Event::Ready(status) => {
                self.awaiting_ready = self.awaiting_ready.saturating_sub(1);
                self.transaction = Some(status);
            }
            // COPY FROM STDIN (or replication's COPY both ways) began: the Syncs sent after the command
            // that started it are swallowed, and so are those sent until its end.
            Event::Start(b'G' | b'W') => {
                self.copy_in = true;
                self.awaiting_ready = self.awaiting_ready.saturating_sub(self.syncs_since_command);
                self.syncs_since_command = 0;
            }
            Event::Start(_) => {}
        }
    }

    /// Whether nothing is in flight and no transaction is open.
    fn is_idle(&self) -> bool {
        self.awaiting_ready == 0
            && !self.open_pipeline
            && !self.copy_in
            && self.transaction == Some(b'I')
    }
}

impl Relay {
    /// Moves bytes both ways; `Some(reason)` once asked to end and idle, `None` once a side closed.
    fn poll<C, U>(
        &mut self,
        cx: &mut Context<'_>,
        client: &mut C,
        upstream: &mut U,
        end: Pin<&mut impl Future<Output = EndReason>>,
    ) -> Poll<io::Result<Option<EndReason>>>
    where
        C: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        if self.ending.is_none()
            && let Poll::Ready(reason) = end.poll(cx)
        {
            self.ending = Some(reason);
        }
        loop {
            if let Some(reason) = self.ending
                && self.is_idle()
            {
                return Poll::Ready(Ok(Some(reason)));
            }
            let Relay {
                from_client,
                from_server,
                conversation,
                ..
            } = self;
            let client_side = from_client.poll_move(cx, client, upstream, |event| {
                if let Event::Start(tag) = event {
                    conversation.client_sent(tag);
                }
            })?;
            let server_side = from_server.poll_move(cx, upstream, client, |event| {
                conversation.server_sent(event)
            })?;
            match (client_side, server_side) {
                // Either side's end of stream ends the session (PostgreSQL closes after `Terminate`).
                (Poll::Ready(Flow::Closed), _) | (_, Poll::Ready(Flow::Closed)) => {
                    return Poll::Ready(Ok(None));
                }
                (Poll::Pending, Poll::Pending) => return Poll::Pending,
                // Bytes moved: look for an idle point again, then go on.
                _ => {}
            }
        }
    }

    /// Whether the session is at an idle point: nothing in flight either way, outside a transaction.
    fn is_idle(&self) -> bool {
        self.conversation.is_idle() && self.from_client.is_empty() && self.from_server.is_empty()
    }
}

/// What one direction did in a poll.
enum Flow {
    /// Bytes moved; poll again.
    Moved,
    /// The reading side reached its end (all read was forwarded).
    Closed,
}

/// One direction: a buffer between a reader and a writer, and the framing of what passed.
struct Direction {
    buffer: Box<[u8]>,
    /// Bytes `start..end` of the buffer are read and not yet written.
    start: usize,
    end: usize,
    /// Written since the last flush.
    unflushed: bool,
    framing: Framing,
}

impl Default for Direction {
    fn default() -> Self {
        Self {
            buffer: vec![0; BUFFER_SIZE].into_boxed_slice(),
            start: 0,
            end: 0,
            unflushed: false,
            framing: Framing::default(),
        }
    }
}

impl Direction {
    /// Nothing read is waiting to be written, and the stream is at a message boundary.
    fn is_empty(&self) -> bool {
        self.start == self.end && self.framing.at_boundary()
    }

    /// Writes what is buffered, else reads more (each read's messages reported to `observe` before any of
    /// it is written). `Ready(Moved)` after progress, `Pending` when neither side can move now.
    fn poll_move<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        reader: &mut R,
        writer: &mut W,
        observe: impl FnMut(Event),
    ) -> io::Result<Poll<Flow>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        if self.start < self.end {
            let written =
                match Pin::new(&mut *writer).poll_write(cx, &self.buffer[self.start..self.end]) {
                    Poll::Ready(written) => written?,
                    Poll::Pending => return Ok(Poll::Pending),
                };
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            self.start += written;
            self.unflushed = true;
            return Ok(Poll::Ready(Flow::Moved));
        }
        let mut read = ReadBuf::new(&mut self.buffer);
        match Pin::new(&mut *reader).poll_read(cx, &mut read) {
            Poll::Ready(result) => result?,
            Poll::Pending => {
                // Nothing more to send soon: push out what was written (TLS buffers its records).
                // A flush still pending stays owed (and its waker is registered).
                if self.unflushed && Pin::new(&mut *writer).poll_flush(cx)?.is_ready() {
                    self.unflushed = false;
                }
                return Ok(Poll::Pending);
            }
        }
        let filled = read.filled().len();
        if filled == 0 {
            let _ = Pin::new(&mut *writer).poll_flush(cx);
            return Ok(Poll::Ready(Flow::Closed));
        }
        self.framing.walk(&self.buffer[..filled], observe);
        self.start = 0;
        self.end = filled;
        Ok(Poll::Ready(Flow::Moved))
    }
}

/// What the framing reports of a direction's bytes.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A message with this type byte begins.
    Start(u8),
    /// A `ReadyForQuery` with this transaction status.
    Ready(u8),
}

/// Where a byte stream stands in PostgreSQL's framing: a type byte, a length counting itself, the body.
#[derive(Debug, Default)]
struct Framing {
    /// Header bytes of the current message collected so far (0 between messages, up to 5).
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to pass.
    body_left: usize,
    /// Whether the next body byte is the first (a `ReadyForQuery`'s status).
    body_started: bool,
    /// A length below 4 was seen: the stream is not PostgreSQL's, so no idle point is ever claimed (the
    /// bytes still pass; the other side judges them).
    lost: bool,
}

impl Framing {
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.body_left == 0 && !self.lost
    }

    /// Follows `bytes`, reporting each message's start and each `ReadyForQuery`'s status.
    fn walk(&mut self, mut bytes: &[u8], mut observe: impl FnMut(Event)) {
        while !bytes.is_empty() && !self.lost {
            if self.body_left > 0 {
                if !self.body_started && self.header[0] == b'Z' {
                    observe(Event::Ready(bytes[0]));
                }
                self.body_started = true;
                let passed = self.body_left.min(bytes.len());
                self.body_left -= passed;
                bytes = &bytes[passed..];
                if self.body_left == 0 {
                    self.header_len = 0;
                }
                continue;
            }
            if self.header_len == 0 {
                observe(Event::Start(bytes[0]));
            }
            let taken = (5 - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + taken].copy_from_slice(&bytes[..taken]);
            self.header_len += taken;
            bytes = &bytes[taken..];
            if self.header_len == 5 {
                let length = i32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]);
                match usize::try_from(length) {
                    Ok(length) if length >= 4 => {
                        self.body_left = length - 4;
                        self.body_started = false;
                        if self.body_left == 0 {
                            self.header_len = 0;
                        }
                    }
                    _ => self.lost = true,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        protocol::with_length(Some(tag), body.to_vec())
    }

    /// The events of `bytes` fed in pieces of `piece` bytes.
    fn events(bytes: &[u8], piece: usize) -> (Vec<Event>, bool) {
        let mut framing = Framing::default();
        let mut seen = Vec::new();
        for chunk in bytes.chunks(piece) {
            framing.walk(chunk, |e| seen.push(e));
        }
        (seen, framing.at_boundary())
    }

    #[test]
    fn framing_reports_each_start_and_ready_status_however_the_bytes_are_cut() {
        // Proves: message starts and a ReadyForQuery's status are found whatever the read boundaries,
        // down to one byte per read, and the stream is at a boundary exactly after the last message.
        let mut stream = message(b'C', b"SELECT 1\0");
        stream.extend(message(b'Z', b"T"));
        stream.extend(message(b'S', b""));
        stream.extend(message(b'Z', b"I"));
        for piece in 1..=stream.len() {
            let (seen, boundary) = events(&stream, piece);
            assert_eq!(
                seen,
                vec![
                    Event::Start(b'C'),
                    Event::Start(b'Z'),
                    Event::Ready(b'T'),
                    Event::Start(b'S'),
                    Event::Start(b'Z'),
                    Event::Ready(b'I'),
                ],
                "pieces of {piece}"
            );
            assert!(boundary, "pieces of {piece}");
        }
        let (_, boundary) = events(&stream[..stream.len() - 1], 7);
        assert!(!boundary, "a message cut short is not at a boundary");
    }

    #[test]
    fn a_length_below_four_loses_the_framing_for_good() {
        // Proves: a stream that is not PostgreSQL's framing never claims a boundary (no idle point).
        let mut stream = vec![b'Q', 0, 0, 0, 2];
        stream.extend(message(b'Z', b"I"));
        let (seen, boundary) = events(&stream, 64);
        assert_eq!(seen, vec![Event::Start(b'Q')]);
        assert!(!boundary);
    }

    /// A relay between in-memory streams: the client's end, the server's end, and the relay's task, which
    /// ends its session once `end` completes and the session is idle.
    fn relayed(
        end: impl Future<Output = EndReason> + Send + 'static,
    ) -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<io::Result<RelayEnd>>,
    ) {
        let (client, mut client_side) = tokio::io::duplex(64 * 1024);
        let (server, mut server_side) = tokio::io::duplex(64 * 1024);
        let task =
            tokio::spawn(async move { relay(&mut client_side, &mut server_side, end).await });
        (client, server, task)
    }

    /// How the relay's task ended; a relay still running after 10 s fails the test instead of hanging it.
    async fn ended(task: tokio::task::JoinHandle<io::Result<RelayEnd>>) -> RelayEnd {
        tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the relay did not end")
            .expect("task")
            .expect("relay")
    }

    /// Reads exactly `len` bytes.
    async fn read_exactly<R: AsyncRead + Unpin>(stream: &mut R, len: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut bytes = vec![0; len];
        stream.read_exact(&mut bytes).await.expect("read");
        bytes
    }

    /// Everything left on `stream` until its end.
    async fn read_rest<R: AsyncRead + Unpin>(stream: &mut R) -> Vec<u8> {
        use tokio::io::AsyncReadExt as _;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.expect("read");
        bytes
    }

    #[tokio::test]
    async fn an_idle_session_asked_to_end_gets_57p01_and_the_server_a_terminate() {
        // Proves: a session idle when asked to end is ended at once: the client gets PostgreSQL's FATAL
        // 57P01 with the drain's hint, the server a Terminate, and the relay reports why.
        let (mut client, mut server, task) = relayed(async { EndReason::Drain });
        let ended = ended(task).await;
        assert_eq!(ended, RelayEnd::Ended(EndReason::Drain));
        let to_client = read_rest(&mut client).await;
        assert_eq!(to_client, EndReason::Drain.error_response());
        let fields = protocol::parse_fields(&to_client[5..]);
        assert!(fields.contains(&(b'C', "57P01".into())), "{fields:?}");
        assert_eq!(read_rest(&mut server).await, protocol::terminate());
    }

    #[tokio::test]
    async fn a_transaction_finishes_before_its_session_is_ended() {
        // Proves: a session inside a transaction when asked to end goes on relaying both ways (the COMMIT
        // reaches the server, its answer the client) and is ended at the ReadyForQuery 'I' after it; a
        // query sent before its answer came keeps the session busy too.
        let (asked, ask) = tokio::sync::oneshot::channel::<()>();
        let (mut client, mut server, task) = relayed(async move {
            let _ = ask.await;
            EndReason::Drain
        });
        let begin = message(b'Q', b"BEGIN\0");
        client.write_all(&begin).await.expect("write");
        assert_eq!(read_exactly(&mut server, begin.len()).await, begin);
        let in_transaction = [message(b'C', b"BEGIN\0"), message(b'Z', b"T")].concat();
        server.write_all(&in_transaction).await.expect("write");
        assert_eq!(
            read_exactly(&mut client, in_transaction.len()).await,
            in_transaction
        );
        asked.send(()).expect("ask");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!task.is_finished(), "a session in a transaction was ended");
        let commit = message(b'Q', b"COMMIT\0");
        client.write_all(&commit).await.expect("write");
        assert_eq!(read_exactly(&mut server, commit.len()).await, commit);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !task.is_finished(),
            "a session awaiting its COMMIT's answer was ended"
        );
        let committed = [message(b'C', b"COMMIT\0"), message(b'Z', b"I")].concat();
        server.write_all(&committed).await.expect("write");
        let ended = ended(task).await;
        assert_eq!(ended, RelayEnd::Ended(EndReason::Drain));
        let mut expected = committed.clone();
        expected.extend(EndReason::Drain.error_response());
        assert_eq!(read_rest(&mut client).await, expected);
        assert_eq!(read_rest(&mut server).await, protocol::terminate());
    }

    #[tokio::test]
    async fn an_open_pipeline_waits_for_its_sync() {
        // Proves: extended-protocol messages without their Sync keep the session busy even though the
        // last ReadyForQuery said idle; the session ends at the ReadyForQuery answering the Sync.
        let (asked, ask) = tokio::sync::oneshot::channel::<()>();
        let (mut client, mut server, task) = relayed(async move {
            let _ = ask.await;
            EndReason::TokenExpired
        });
        let parse = message(b'P', b"\0SELECT 1\0\0\0");
        client.write_all(&parse).await.expect("write");
        assert_eq!(read_exactly(&mut server, parse.len()).await, parse);
        asked.send(()).expect("ask");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !task.is_finished(),
            "a session with an open pipeline was ended"
        );
        let sync = message(b'S', b"");
        client.write_all(&sync).await.expect("write");
        assert_eq!(read_exactly(&mut server, sync.len()).await, sync);
        let answer = [message(b'1', b""), message(b'Z', b"I")].concat();
        server.write_all(&answer).await.expect("write");
        let ended = ended(task).await;
        assert_eq!(ended, RelayEnd::Ended(EndReason::TokenExpired));
        let mut expected = answer.clone();
        expected.extend(EndReason::TokenExpired.error_response());
        assert_eq!(read_rest(&mut client).await, expected);
    }

    #[tokio::test]
    async fn a_copy_in_through_the_extended_protocol_ends_idle_after_its_one_ready_for_query() {
        // Proves: libpq's COPY FROM STDIN through PQexecParams (Parse, Bind, Execute, Sync, the data,
        // CopyDone, Sync) counts one ReadyForQuery, not two: the server ignores the Sync sent during
        // COPY-in, so the session reaches its idle point after the one it answers, and not before it.
        let (asked, ask) = tokio::sync::oneshot::channel::<()>();
        let (mut client, mut server, task) = relayed(async move {
            let _ = ask.await;
            EndReason::Drain
        });
        let start = [
            message(b'P', b"\0COPY t FROM STDIN\0\0\0"),
            message(b'B', b"\0\0\0\0\0\0\0\0"),
            message(b'E', b"\0\0\0\0\0"),
            message(b'S', b""),
        ]
        .concat();
        client.write_all(&start).await.expect("write");
        assert_eq!(read_exactly(&mut server, start.len()).await, start);
        let copying = [
            message(b'1', b""),
            message(b'2', b""),
            message(b'G', b"\0\0\0"),
        ]
        .concat();
        server.write_all(&copying).await.expect("write");
        assert_eq!(read_exactly(&mut client, copying.len()).await, copying);
        asked.send(()).expect("ask");
        let data = [
            message(b'd', b"1\n"),
            message(b'c', b""),
            message(b'S', b""),
        ]
        .concat();
        client.write_all(&data).await.expect("write");
        assert_eq!(
            read_exactly(&mut server, data.len()).await,
            data,
            "the session was ended during its COPY"
        );
        let done = [message(b'C', b"COPY 1\0"), message(b'Z', b"I")].concat();
        server.write_all(&done).await.expect("write");
        let ended = ended(task).await;
        assert_eq!(ended, RelayEnd::Ended(EndReason::Drain));
        let mut expected = done.clone();
        expected.extend(EndReason::Drain.error_response());
        assert_eq!(read_rest(&mut client).await, expected);
    }

    #[tokio::test]
    async fn bytes_pass_untouched_until_a_side_closes() {
        // Proves: without an end request the relay forwards both ways byte for byte (including bytes
        // that are not PostgreSQL framing) and reports a close when a side ends its stream.
        let (mut client, mut server, task) = relayed(std::future::pending());
        let garbage: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        client.write_all(&garbage).await.expect("write");
        assert_eq!(read_exactly(&mut server, garbage.len()).await, garbage);
        server.write_all(&garbage).await.expect("write");
        assert_eq!(read_exactly(&mut client, garbage.len()).await, garbage);
        drop(client);
        assert_eq!(ended(task).await, RelayEnd::Closed);
    }
}
