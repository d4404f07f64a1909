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
