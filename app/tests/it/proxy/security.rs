//! `pgwi proxy` against hostile clients: raw bytes no real client sends (repeated start-up keys, floods of
//! silent connections and random cancel keys, garbage of every shape), each answered as PostgreSQL answers
//! it, and the proxy serving psql afterwards.

use super::*;

/// One message from the proxy: its type byte and body.
#[derive(Debug)]
struct Reply {
    tag: u8,
    body: Vec<u8>,
}

impl Reply {
    /// A field (`C` SQLSTATE, `M` message, …) of an `ErrorResponse`.
    fn field(&self, code: u8) -> Option<String> {
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
fn raw_startup(params: &[(&str, &str)]) -> Vec<u8> {
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
fn parse_replies(bytes: &[u8]) -> Vec<Reply> {
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
