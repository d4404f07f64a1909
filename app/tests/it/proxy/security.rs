//! `pgwi proxy` against hostile clients: raw bytes no real client sends (repeated start-up keys, floods of
//! silent connections and random cancel keys, garbage of every shape), each answered as PostgreSQL answers
//! it, and the proxy serving psql afterwards.

use super::*;

/// One message from the proxy: its type byte and body.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) tag: u8,
    pub(super) body: Vec<u8>,
}

impl Reply {
    /// A field (`C` SQLSTATE, `M` message, …) of an `ErrorResponse`.
    pub(super) fn field(&self, code: u8) -> Option<String> {
        self.body
            .split(|&b| b == 0)
            .find_map(|f| f.strip_prefix(&[code]))
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// A `ParameterStatus`'s name and value.
    fn parameter(&self) -> Option<(String, String)> {
        let mut parts = self.body.split(|&b| b == 0);
        let name = String::from_utf8_lossy(parts.next()?).into_owned();
        let value = String::from_utf8_lossy(parts.next()?).into_owned();
        (self.tag == b'S').then_some((name, value))
    }
}

/// A start-up message (protocol 3.0) with these parameters, repeats and all, as raw bytes.
pub(super) fn raw_startup(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608_i32.to_be_bytes().to_vec();
    for (key, value) in params {
        body.extend(key.as_bytes());
        body.push(0);
        body.extend(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = i32::try_from(body.len() + 4)
        .expect("small")
        .to_be_bytes()
        .to_vec();
    packet.extend(body);
    packet
}

/// Sends `bytes` on a new connection to the proxy and reads what it answers until it closes the connection,
/// sends `ReadyForQuery` (a session that logged in then waits for a query), or `limit` passes.
async fn exchange(host: &str, port: u16, bytes: &[u8], limit: Duration) -> Vec<Reply> {
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .expect("connect to the proxy");
    stream.write_all(bytes).await.expect("write");
    let deadline = tokio::time::Instant::now() + limit;
    let mut received = Vec::new();
    let mut buf = [0; 8192];
    loop {
        let replies = parse_replies(&received);
        if replies.iter().any(|r| r.tag == b'Z') {
            return replies;
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend(&buf[..n]),
            _ => return replies,
        }
    }
}

/// The complete messages in `bytes`.
pub(super) fn parse_replies(bytes: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = i32::from_be_bytes(rest[1..5].try_into().expect("4 bytes"));
        let end = 1 + usize::try_from(len).expect("a positive length");
        if rest.len() < end {
            break;
        }
        replies.push(Reply {
            tag: rest[0],
            body: rest[5..end].to_vec(),
        });
        rest = &rest[end..];
    }
    replies
}

#[rstest]
#[tokio::test]
async fn a_start_up_that_repeats_user_or_database_is_refused(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: a raw start-up naming the proxy's user and then another role (PostgreSQL keeps the last `user`)
    // gets PostgreSQL's 08P01 and never reaches the server: with the role trusted by the server, a proxy that
    // forwarded it would log the client in as that role. A repeated `database` is refused the same way, and
    // the same start-up without the repeat is served.
    let db = fresh_db;
    let trusted = format!("{}_trusted", db.name());
    db.create_trusted_role(&trusted)
        .await
        .expect("trusted role");
    let (wi, running, host, port) = loopback_proxy(&db).await;

    let limit = Duration::from_secs(30);
    for params in [
        [
            ("user", wi.identity.as_str()),
            ("database", db.name()),
            ("user", &trusted),
        ],
        [
            ("user", wi.identity.as_str()),
            ("database", db.name()),
            ("database", "postgres"),
        ],
    ] {
        let replies = exchange(&host, port, &raw_startup(&params), limit).await;
        let logged_in_as = replies
            .iter()
            .filter_map(Reply::parameter)
            .find(|(name, _)| name == "session_authorization");
        assert_eq!(logged_in_as, None, "the client chose its role: {replies:?}");
        let first = replies.first().expect("an answer");
        assert_eq!(first.tag, b'E', "{replies:?}");
        assert_eq!(first.field(b'C').as_deref(), Some("08P01"), "{replies:?}");
        let message = first.field(b'M').unwrap_or_default();
        assert!(message.contains("more than once"), "{message}");
        assert_eq!(replies.len(), 1, "{replies:?}");
    }

    let replies = exchange(
        &host,
        port,
        &raw_startup(&[("user", wi.identity.as_str()), ("database", db.name())]),
        limit,
    )
    .await;
    let logged_in_as = replies
        .iter()
        .filter_map(Reply::parameter)
        .find(|(name, _)| name == "session_authorization");
    assert_eq!(
        logged_in_as,
        Some(("session_authorization".into(), wi.identity.clone()))
    );
    running.stop().await;
}

/// A session opened with raw bytes: the connection, and the cancel key the proxy handed out.
async fn raw_session(
    host: &str,
    port: u16,
    user: &str,
    db: &str,
) -> (tokio::net::TcpStream, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .expect("connect to the proxy");
    stream
        .write_all(&raw_startup(&[("user", user), ("database", db)]))
        .await
        .expect("start-up");
    let mut received = Vec::new();
    let mut buf = [0; 8192];
    loop {
        let replies = parse_replies(&received);
        if replies.iter().any(|r| r.tag == b'Z') {
            let key = replies
                .iter()
                .find(|r| r.tag == b'K')
                .expect("BackendKeyData");
            return (stream, key.body.clone());
        }
        let n = tokio::time::timeout(START_LIMIT, stream.read(&mut buf))
            .await
            .expect("the login hung")
            .expect("read");
        assert!(n > 0, "closed during login: {replies:?}");
        received.extend(&buf[..n]);
    }
}

/// A CancelRequest carrying `key` (pid and secret).
fn cancel_request(key: &[u8]) -> Vec<u8> {
    let mut packet = 16_i32.to_be_bytes().to_vec();
    packet.extend(80_877_102_i32.to_be_bytes());
    packet.extend(key);
    packet
}

/// Sends a cancel request to the proxy and waits until it closes the connection.
async fn send_cancel(host: &str, port: u16, key: &[u8]) {
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .expect("connect to the proxy");
    stream
        .write_all(&cancel_request(key))
        .await
        .expect("cancel");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(START_LIMIT, stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "the proxy kept a cancel request's connection open"
    );
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_cancel_keys_reach_no_server_and_the_issued_key_cancels_once(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: the key a client gets is the proxy's, not the backend's (its pid differs from
    // pg_backend_pid()); 1000 cancel requests with random keys open no connection to the server (counted by
    // a forwarder in front of it) and log nothing above debug; the issued key cancels the running query
    // over one new server connection, and once the session has ended it opens none.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let forwarder = Forwarder::start(db.server().port()).await;
    let pgwi = proxy(&db, &wi, &["--listen", "127.0.0.1:0"])
        .env("DBHOST", format!("127.0.0.1:{}", forwarder.port));
    let running = Running::start(pgwi, 1, false).await;
    let (host, port) = running.tcp();
    let (mut session, key) = raw_session(&host, port, &wi.identity, db.name()).await;
    assert_eq!(forwarder.connections(), 1);
    let backend_pid = query_one_value(&mut session, "SELECT pg_backend_pid()").await;
    let issued_pid = i32::from_be_bytes(key[..4].try_into().expect("4 bytes"));
    assert_ne!(
        backend_pid,
        issued_pid.to_string(),
        "the client got the backend's own pid"
    );

    let mut senders = tokio::task::JoinSet::new();
    for batch in 0..20 {
        let host = host.clone();
        senders.spawn(async move {
            for i in 0..50_u32 {
                // Distinct keys spread over the whole space (Fibonacci hashing of the index).
                let key = (u64::from(batch * 50 + i) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
                send_cancel(&host, port, &key.to_be_bytes()).await;
            }
        });
    }
    while let Some(done) = senders.join_next().await {
        done.expect("cancel sender");
    }
    assert_eq!(
        forwarder.connections(),
        1,
        "a random key reached the server"
    );

    session
        .write_all(&query_message("SELECT pg_backend_pid(), pg_sleep(60)"))
        .await
        .expect("query");
    // The query must be running before it is cancelled: give the server a moment, then cancel.
    tokio::time::sleep(Duration::from_millis(500)).await;
    send_cancel(&host, port, &key).await;
    let mut received = Vec::new();
    let mut buf = [0; 8192];
    let error = loop {
        if let Some(error) = parse_replies(&received).into_iter().find(|r| r.tag == b'E') {
            break error;
        }
        let n = tokio::time::timeout(START_LIMIT, session.read(&mut buf))
            .await
            .expect("the cancel never arrived")
            .expect("read");
        assert!(n > 0, "the session closed instead of cancelling");
        received.extend(&buf[..n]);
    };
    assert_eq!(error.field(b'C').as_deref(), Some("57014"), "{error:?}");
    assert_eq!(
        forwarder.connections(),
        2,
        "the cancel took one server connection"
    );

    drop(session);
    // The session's end is noticed asynchronously; its key is withdrawn then.
    tokio::time::sleep(Duration::from_secs(1)).await;
    send_cancel(&host, port, &key).await;
    assert_eq!(
        forwarder.connections(),
        2,
        "an ended session's key reached the server"
    );
    let warnings = running.process.log_lines("connection refused");
    assert!(
        warnings.is_empty(),
        "cancel floods must not flood the log: {warnings:?}"
    );
    running.stop().await;
}

/// Runs `sql` on a raw session and returns the first column of its one row, as text.
async fn query_one_value(session: &mut tokio::net::TcpStream, sql: &str) -> String {
    session.write_all(&query_message(sql)).await.expect("query");
    let mut received = Vec::new();
    let mut buf = [0; 8192];
    loop {
        let replies = parse_replies(&received);
        if replies.iter().any(|r| r.tag == b'Z') {
            let row = replies.iter().find(|r| r.tag == b'D').expect("a row");
            let len = i32::from_be_bytes(row.body[2..6].try_into().expect("4 bytes"));
            let len = usize::try_from(len).expect("not NULL");
            return String::from_utf8_lossy(&row.body[6..6 + len]).into_owned();
        }
        let n = tokio::time::timeout(START_LIMIT, session.read(&mut buf))
            .await
            .expect("the query hung")
            .expect("read");
        assert!(n > 0, "closed during a query");
        received.extend(&buf[..n]);
    }
}

/// A simple-query message.
fn query_message(sql: &str) -> Vec<u8> {
    let mut packet = vec![b'Q'];
    packet.extend(i32::try_from(sql.len() + 5).expect("short").to_be_bytes());
    packet.extend(sql.as_bytes());
    packet.push(0);
    packet
}

/// A TCP connection to `port` from the loopback address `source` (127.0.0.0/8 is all this host's).
async fn connect_from(source: [u8; 4], port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .expect("bind a loopback source address");
    socket
        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .expect("connect")
}

/// Whether the proxy has closed `stream` (or sent something) by now, without waiting.
fn answered_or_closed(stream: &tokio::net::TcpStream) -> bool {
    let mut probe = [0_u8; 1];
    !matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

#[rstest]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_on_a_remote_listener_leave_the_local_ones_served(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: one address gets at most 8 of a remote listener's start-up slots (a 9th connection from it
    // is closed at once); 64 silent connections from 8 addresses take all 64 slots, so a client from a
    // 9th address gets no answer to its start-up while they hold them (it waits in the backlog), yet psql
    // is served on the loopback listener and the Unix socket meanwhile, with --max-clients 2 (clients in
    // their start-up take no session slot); the proxy closes the silent ones at the start-up timeout,
    // logging them at debug only, and then answers the waiting client.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let password = pgwi_testsupport::random_alphanumeric(20);
    pgwi_testsupport::secrets::register(&password);
    let dir = tempfile::tempdir().expect("socket dir");
    let socket_dir = dir.path().to_str().expect("UTF-8 path");
    let args = [
        "--listen",
        "0.0.0.0:0",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        socket_dir,
        "--allow-remote",
        "--startup-timeout-secs",
        "15",
        "--max-clients",
        "2",
    ];
    let pgwi = proxy(&db, &wi, &args)
        .env("PGWI_PROXY__LOCAL_PASSWORD_ENV", "LOCAL_PROXY_PASSWORD")
        .env("LOCAL_PROXY_PASSWORD", &password);
    let mut running = Running::start(pgwi, 3, false).await;
    let address = |prefix: &str| {
        let found = running.listening.iter().find(|a| a.starts_with(prefix));
        host_port(found.expect("a listener"))
    };
    let (_, remote_port) = address("0.0.0.0:");
    let (loopback_host, loopback_port) = address("127.0.0.1:");
    let (socket_host, socket_port) = address("/");

    let mut flood = Vec::new();
    for _ in 0..8 {
        flood.push(connect_from([127, 0, 0, 2], remote_port).await);
    }
    let mut ninth = connect_from([127, 0, 0, 2], remote_port).await;
    let mut rest = Vec::new();
    tokio::time::timeout(START_LIMIT, ninth.read_to_end(&mut rest))
        .await
        .expect("a 9th connection from one address was kept")
        .expect("read");
    assert!(rest.is_empty(), "{rest:?}");
    for host in 3..10 {
        for _ in 0..8 {
            flood.push(connect_from([127, 0, 0, host], remote_port).await);
        }
    }
    let mut waiting = connect_from([127, 0, 0, 10], remote_port).await;
    let startup = raw_startup(&[("user", wi.identity.as_str()), ("database", db.name())]);
    waiting.write_all(&startup).await.expect("start-up");

    for (host, port, what) in [
        (&loopback_host, loopback_port, "loopback"),
        (&socket_host, socket_port, "unix socket"),
    ] {
        let sql = format!("SELECT '{what}'");
        let out = psql(host, port, &wi.identity, db.name(), &sql, &[]).await;
        assert_eq!(assert_ok(what, &out), what);
    }
    let held = flood.iter().filter(|s| !answered_or_closed(s)).count();
    assert_eq!(
        held, 64,
        "the flood ended before the local clients were served: inconclusive"
    );
    assert!(
        !answered_or_closed(&waiting),
        "a client beyond the 64 slots was answered while they were all held"
    );

    for mut silent in flood {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(START_LIMIT, silent.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a silent connection was never closed");
        assert!(rest.is_empty(), "a silent connection was sent {rest:?}");
    }
    let mut first = [0_u8; 1];
    tokio::time::timeout(START_LIMIT, waiting.read_exact(&mut first))
        .await
        .expect("the waiting client was never answered")
        .expect("read");
    assert_eq!(first[0], b'R', "not the local password's SASL request");
    let out = psql(
        "127.0.0.1",
        remote_port,
        &wi.identity,
        db.name(),
        "SELECT 'remote'",
        &[("PGPASSWORD", &password)],
    )
    .await;
    assert_eq!(assert_ok("remote after the flood", &out), "remote");
    let dropped = running
        .process
        .wait_for_log("connection dropped", 64, START_LIMIT)
        .await;
    assert!(
        dropped.len() >= 64,
        "{} silent connections logged at debug",
        dropped.len()
    );
    let warned = running.process.log_lines("connection refused");
    assert!(
        warned.is_empty(),
        "silent connections logged as warnings: {warned:?}"
    );
    running.stop().await;
}

#[rstest]
#[tokio::test]
async fn a_client_sending_its_start_up_a_byte_at_a_time_is_cut_at_the_deadline(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: the start-up timeout bounds the whole start-up, not each read: a client that sends a byte
    // every half second (which an idle timeout would never cut) is closed before its start-up is complete.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let args = ["--listen", "127.0.0.1:0", "--startup-timeout-secs", "2"];
    let running = Running::start(proxy(&db, &wi, &args), 1, false).await;
    let (host, port) = running.tcp();
    let startup = raw_startup(&[("user", wi.identity.as_str()), ("database", db.name())]);
    let mut slow = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .expect("connect");
    let mut sent = 0;
    for byte in &startup {
        if answered_or_closed(&slow) || slow.write_all(&[*byte]).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        sent < startup.len(),
        "the whole start-up went through one byte at a time ({sent} bytes)"
    );
    running.stop().await;
}

/// A small deterministic generator (SplitMix64), so a failing flood can be replayed from its seed.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// The kinds of hostile connection a flood opens, in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Hostile {
    /// 1 to 512 random bytes, then the write half closed.
    RandomBytes,
    /// A length above the start-up limit (10 001 to 2^31 - 1), a protocol version and a few bytes.
    HugeLength,
    /// A length below 8: 7 down to -2^31 + 8.
    NegativeLength,
    /// A start-up cut short, then the write half closed.
    TruncatedStartup,
    /// A start-up cut short, and the connection left open.
    TruncatedHeldOpen,
    /// Two to five SSLRequests in a row.
    RepeatedSslRequest,
    /// A protocol 2.0 start-up (PostgreSQL 7.3's).
    Protocol2,
    /// A start-up naming one of its keys twice.
    RepeatedKey,
    /// A cancel request with a random pid and key.
    RandomCancel,
    /// Nothing at all, the connection left open.
    Silent,
}

const HOSTILE: [Hostile; 10] = [
    Hostile::RandomBytes,
    Hostile::HugeLength,
    Hostile::NegativeLength,
    Hostile::TruncatedStartup,
    Hostile::TruncatedHeldOpen,
    Hostile::RepeatedSslRequest,
    Hostile::Protocol2,
    Hostile::RepeatedKey,
    Hostile::RandomCancel,
    Hostile::Silent,
];

impl Hostile {
    /// The bytes sent, and whether the write half is closed after them.
    fn bytes(self, random: &mut Random, user: &str, db: &str) -> (Vec<u8>, bool) {
        let startup = raw_startup(&[
            ("user", user),
            ("database", db),
            ("application_name", "hostile"),
        ]);
        let ssl_request = [8_i32.to_be_bytes(), 80_877_103_i32.to_be_bytes()].concat();
        match self {
            Hostile::RandomBytes => {
                let n = 1 + random.below(512) as usize;
                (random.bytes(n), true)
            }
            Hostile::HugeLength => {
                let len = 10_001 + random.below((i32::MAX - 10_001) as u64) as i32;
                let mut bytes = [len.to_be_bytes(), 196_608_i32.to_be_bytes()].concat();
                bytes.extend(random.bytes(16));
                (bytes, true)
            }
            Hostile::NegativeLength => {
                let len = 7 - random.below(1 << 31) as i32;
                (
                    [len.to_be_bytes(), 196_608_i32.to_be_bytes()].concat(),
                    true,
                )
            }
            Hostile::TruncatedStartup | Hostile::TruncatedHeldOpen => {
                let cut = 1 + random.below(startup.len() as u64 - 1) as usize;
                (startup[..cut].to_vec(), self == Hostile::TruncatedStartup)
            }
            Hostile::RepeatedSslRequest => (ssl_request.repeat(2 + random.below(4) as usize), true),
            Hostile::Protocol2 => {
                // Int32 296, version 2.0, then database[64], user[32], options[64], unused[64], tty[64].
                let mut bytes = [296_i32.to_be_bytes(), 0x0002_0000_i32.to_be_bytes()].concat();
                for (value, width) in [(db, 64), (user, 32), ("", 64), ("", 64), ("", 64)] {
                    let mut field = value.as_bytes().to_vec();
                    field.resize(width, 0);
                    bytes.extend(field);
                }
                (bytes, true)
            }
            Hostile::RepeatedKey => {
                let key =
                    ["user", "database", "options", "application_name"][random.below(4) as usize];
                let params = [("user", user), ("database", db), (key, "postgres")];
                // `options` or `application_name` named once is no repeat: name it a second time.
                let mut params = params.to_vec();
                if !["user", "database"].contains(&key) {
                    params.push((key, "again"));
                }
                (raw_startup(&params), true)
            }
            Hostile::RandomCancel => {
                let mut bytes = [16_i32.to_be_bytes(), 80_877_102_i32.to_be_bytes()].concat();
                bytes.extend(random.bytes(8));
                (bytes, true)
            }
            Hostile::Silent => (Vec::new(), false),
        }
    }
}

/// Opens one hostile connection: sends its bytes, then reads until the proxy closes it (or `limit`
/// passes). What the proxy answered, and when it closed the connection (`None`: still open at `limit`).
async fn hostile(
    host: &str,
    port: u16,
    bytes: &[u8],
    shutdown: bool,
    limit: Duration,
) -> (Vec<u8>, Option<Duration>) {
    let started = tokio::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect((host, port))
        .await
        .expect("connect to the proxy");
    // The proxy may close before taking everything (a length it refuses): a failed write is its answer.
    if stream.write_all(bytes).await.is_ok() && shutdown {
        let _ = stream.shutdown().await;
    }
    let mut reply = Vec::new();
    let mut buf = [0; 4096];
    loop {
        match tokio::time::timeout_at(started + limit, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => reply.extend(&buf[..n]),
            // End of stream or a reset: closed.
            Ok(_) => return (reply, Some(started.elapsed())),
            Err(_) => return (reply, None),
        }
    }
}

/// Whether a hostile connection's reply is what PostgreSQL answers such bytes with: `N` to each TLS request
/// answered, then nothing or one `ErrorResponse` with `sqlstate` (any SQLSTATE if `None`), and nothing else
/// (no authentication request: nothing got past the start-up).
fn reply_problem(kind: Hostile, reply: &[u8]) -> Option<String> {
    let expected = match kind {
        Hostile::RepeatedSslRequest | Hostile::Protocol2 => Some("0A000"),
        Hostile::RepeatedKey => Some("08P01"),
        Hostile::RandomBytes => None,
        _ if reply.is_empty() => return None,
        _ => {
            return Some(format!(
                "{kind:?} was answered {:?}",
                String::from_utf8_lossy(reply)
            ));
        }
    };
    let answered_n = reply.iter().take_while(|&&b| b == b'N').count();
    if kind == Hostile::RepeatedSslRequest && answered_n != 1 {
        return Some(format!("{kind:?}: {answered_n} SSLRequests answered"));
    }
    let messages = parse_replies(&reply[answered_n..]);
    let consumed: usize = messages.iter().map(|m| 5 + m.body.len()).sum();
    let problem = match (&messages[..], expected) {
        _ if consumed != reply.len() - answered_n => Some("bytes that are not messages"),
        ([], None) => None,
        ([error], _) if error.tag != b'E' => Some("a message that is not an error"),
        ([error], Some(code)) if error.field(b'C').as_deref() != Some(code) => {
            Some("another SQLSTATE")
        }
        ([_], _) => None,
        _ => Some("not exactly one error"),
    };
    problem.map(|why| format!("{kind:?}: {why}: {:?}", String::from_utf8_lossy(reply)))
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[rstest]
#[tokio::test]
async fn thousands_of_hostile_connections_leave_the_proxy_serving_in_bounded_memory(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: 4000 hostile connections on the loopback listener, 50 at a time (random bytes, huge and
    // negative lengths, truncated start-ups closed or held open, repeated SSLRequests, protocol 2
    // start-ups, start-ups repeating a key, cancel requests with random keys, silent connections) are each
    // closed by the proxy — the silent and held-open ones at the 1 s start-up timeout — and answered only
    // as PostgreSQL answers them (a TLS refusal `N`, at most one error: 0A000, 08P01), never past the
    // start-up; no random cancel key is forwarded (each is logged dropped, none ended as a forwarded
    // cancel) and an open session's key is not hit; psql is served over TCP and the Unix socket while the
    // flood runs and after it, the open session still answers, and the proxy's peak resident memory grew
    // by less than 64 MiB.
    const CONNECTIONS: usize = 4000;
    const AT_ONCE: usize = 50;
    const STARTUP_TIMEOUT: Duration = Duration::from_secs(1);
    const MEMORY_BOUND_KIB: u64 = 64 * 1024;
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let dir = tempfile::tempdir().expect("socket dir");
    let socket = format!("{}:6544", dir.path().display());
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--listen",
        &socket,
        "--startup-timeout-secs",
        "1",
    ];
    let mut running = Running::start(proxy(&db, &wi, &args), 2, false).await;
    let (host, port) = running.tcp();
    let dir_text = dir.path().display().to_string();
    let user = wi.identity.clone();
    let served = |host: String, port: u16| {
        let (user, db) = (user.clone(), db.name().to_owned());
        async move {
            let out = psql(&host, port, &user, &db, "SELECT current_user", &[]).await;
            assert_eq!(assert_ok("psql", &out), user);
        }
    };
    served(host.clone(), port).await;
    served(dir_text.clone(), 6544).await;
    let mut open_session = connect(&host, port, &wi.identity, db.name())
        .await
        .expect("a session through the proxy");
    let pid = running.process.id();
    let (rss_before, peak_before) = memory_kib(pid);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos() as u64;
    println!("hostile flood seed {seed}");
    let flood = {
        let (host, user, db) = (host.clone(), wi.identity.clone(), db.name().to_owned());
        tokio::spawn(async move {
            let mut random = Random(seed);
            let at_once = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
            let mut tasks = tokio::task::JoinSet::new();
            let started = tokio::time::Instant::now();
            for i in 0..CONNECTIONS {
                let kind = HOSTILE[i % HOSTILE.len()];
                let (bytes, shutdown) = kind.bytes(&mut random, &user, &db);
                let permit = at_once.clone().acquire_owned().await.expect("semaphore");
                let host = host.clone();
                tasks.spawn(async move {
                    let limit = STARTUP_TIMEOUT + Duration::from_secs(20);
                    let (reply, closed) = hostile(&host, port, &bytes, shutdown, limit).await;
                    drop(permit);
                    (kind, reply, closed)
                });
            }
            let mut outcomes = Vec::with_capacity(CONNECTIONS);
            while let Some(outcome) = tasks.join_next().await {
                outcomes.push(outcome.expect("a hostile client panicked"));
            }
            (outcomes, started.elapsed())
        })
    };

    // Served while the flood runs, on both listeners (its silent connections alone take 16 s at 50 at once:
    // psql starts well inside it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!flood.is_finished(), "the flood ended within 2 s");
    served(dir_text.clone(), 6544).await;
    served(host.clone(), port).await;
    println!(
        "psql served during the flood; the flood {} when psql was done",
        if flood.is_finished() {
            "had ended"
        } else {
            "was still going"
        }
    );
    let (outcomes, took) = tokio::time::timeout(Duration::from_secs(600), flood)
        .await
        .expect("the flood took more than 10 minutes")
        .expect("the flood");
    let (rss_after, peak_after) = memory_kib(pid);

    let mut problems = Vec::new();
    let mut slowest = std::collections::BTreeMap::<Hostile, Duration>::new();
    for (kind, reply, closed) in &outcomes {
        let Some(closed) = closed else {
            let reply = String::from_utf8_lossy(reply);
            problems.push(format!(
                "{kind:?}: still open after 21 s (answered {reply:?})"
            ));
            continue;
        };
        let slowest = slowest.entry(*kind).or_default();
        *slowest = (*slowest).max(*closed);
        if matches!(kind, Hostile::Silent | Hostile::TruncatedHeldOpen)
            && *closed < STARTUP_TIMEOUT - Duration::from_millis(100)
        {
            problems.push(format!(
                "{kind:?}: closed after {closed:?}, before the start-up timeout"
            ));
        }
        problems.extend(reply_problem(*kind, reply));
    }
    println!(
        "{} hostile connections ({AT_ONCE} at a time) in {took:?}; slowest close per kind: {slowest:?}",
        outcomes.len()
    );
    println!(
        "proxy memory: VmRSS {rss_before} KiB -> {rss_after} KiB, VmHWM {peak_before} KiB -> {peak_after} KiB"
    );
    assert_eq!(outcomes.len(), CONNECTIONS);
    assert!(
        problems.is_empty(),
        "{} of {CONNECTIONS} hostile connections were not handled as PostgreSQL would (seed {seed}):\n{}",
        problems.len(),
        problems[..problems.len().min(20)].join("\n")
    );
    assert!(
        peak_after.saturating_sub(rss_before) < MEMORY_BOUND_KIB,
        "the proxy's peak memory grew from {rss_before} KiB to {peak_after} KiB during the flood"
    );

    // Served after the flood, and the session that was open throughout still answers.
    served(host.clone(), port).await;
    served(dir_text.clone(), 6544).await;
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut open_session)
        .await
        .expect("the open session answers after the flood");
    assert_eq!(one, 1);
    drop(open_session);

    // Every random cancel was dropped (logged at debug), none forwarded. Each connection's line is written
    // as it ends, which can be just after the client saw the close.
    let cancels = outcomes
        .iter()
        .filter(|(kind, ..)| *kind == Hostile::RandomCancel)
        .count();
    let of_kind = |lines: Vec<serde_json::Value>, kind: &str| {
        lines
            .into_iter()
            .filter(|line| line["fields"]["kind"] == kind)
            .collect::<Vec<_>>()
    };
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let dropped = loop {
        let dropped = of_kind(running.process.log_lines("connection dropped"), "cancel");
        if dropped.len() >= cancels || std::time::Instant::now() > until {
            break dropped;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dropped.len(), cancels, "random cancels logged dropped");
    for line in &dropped {
        let error = line["fields"]["error"].as_str().unwrap_or_default();
        assert!(error.contains("for no open session"), "{line}");
    }
    for message in ["connection ended", "connection refused"] {
        let forwarded = of_kind(running.process.log_lines(message), "cancel");
        assert!(
            forwarded.is_empty(),
            "a random cancel key was acted on ({message}): {forwarded:?}"
        );
    }
    assert!(!running.process.has_exited(), "the proxy exited");
    running.stop().await;
}
