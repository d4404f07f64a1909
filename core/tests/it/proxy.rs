//! `pgwi_core::proxy` against a scripted server: the SCRAM-SHA-256 exchanges a real PostgreSQL does not
//! misbehave in (no final message, an error in it, a greedy iteration count), each of which must reach the
//! client as one error instead of a session.

use pgwi_core::Config;
use pgwi_core::config::SslMode;
use pgwi_core::proxy::Proxy;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::support::{start_session, static_password};

/// How the scripted server misbehaves after the client's proof.
#[derive(Clone, Copy)]
enum Script {
    /// `AuthenticationOk` without the SASLFinal that proves the server knows the password.
    OkWithoutFinal,
    /// A SASLFinal carrying `e=`, a server-side error.
    FinalWithError,
    /// A server-first asking for a million iterations (the proxy stops there).
    GreedyIterations,
    /// A cleartext password request, then `AuthenticationOk`, the backend key `0,0,0,42,1,2,3,4` and
    /// `ReadyForQuery`.
    CleartextOk,
    /// A cleartext password request, then `AuthenticationOk` and 2 MiB of notices before `ReadyForQuery`.
    CleartextNoticeFlood,
}

/// The backend key the scripted server hands out.
const SERVER_KEY: [u8; 8] = [0, 0, 0, 42, 1, 2, 3, 4];

/// One message: type byte and body.
async fn read_message<R: AsyncRead + Unpin>(stream: &mut R) -> (u8, Vec<u8>) {
    let tag = stream.read_u8().await.expect("tag");
    let len = stream.read_i32().await.expect("length");
    let mut body = vec![0; usize::try_from(len).expect("length") - 4];
    stream.read_exact(&mut body).await.expect("body");
    (tag, body)
}

fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(i32::try_from(body.len() + 4).expect("length").to_be_bytes());
    out.extend(body);
    out
}

fn auth(code: i32, data: &[u8]) -> Vec<u8> {
    message(b'R', &[&code.to_be_bytes()[..], data].concat())
}

/// A server on loopback that asks for SCRAM-SHA-256 and then follows `script`; its port.
async fn scripted_server(script: Script) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let len = stream.read_i32().await.expect("start-up length");
        let mut startup = vec![0; usize::try_from(len).expect("length") - 4];
        stream.read_exact(&mut startup).await.expect("start-up");
        if matches!(script, Script::CleartextOk | Script::CleartextNoticeFlood) {
            cleartext_login(&mut stream, script).await;
            return;
        }
        stream
            .write_all(&auth(10, b"SCRAM-SHA-256\0\0"))
            .await
            .expect("SASL");
        let (_, initial) = read_message(&mut stream).await;
        let text = String::from_utf8_lossy(&initial).into_owned();
        let nonce = text.rsplit("r=").next().expect("client nonce").to_owned();
        let iterations = match script {
            Script::GreedyIterations => 1_000_000,
            _ => 4096,
        };
        let first = format!("r={nonce}server,s=c2FsdA==,i={iterations}");
        stream
            .write_all(&auth(11, first.as_bytes()))
            .await
            .expect("SASL continue");
        if matches!(script, Script::GreedyIterations) {
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest).await;
            return;
        }
        let _proof = read_message(&mut stream).await;
        let reply = match script {
            Script::OkWithoutFinal => [auth(0, b""), message(b'Z', b"I")].concat(),
            _ => auth(12, b"e=invalid-proof"),
        };
        stream.write_all(&reply).await.expect("reply");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    port
}

/// The cleartext scripts: the password request, then what `script` sends.
async fn cleartext_login(stream: &mut tokio::net::TcpStream, script: Script) {
    stream
        .write_all(&auth(3, b""))
        .await
        .expect("password request");
    let _password = read_message(stream).await;
    let mut reply = auth(0, b"");
    if matches!(script, Script::CleartextNoticeFlood) {
        let notice = message(b'N', &[&b"SNOTICE\0M"[..], &[b'x'; 1000], b"\0\0"].concat());
        for _ in 0..2048 {
            reply.extend(&notice);
        }
    }
    reply.extend(message(b'K', &SERVER_KEY));
    reply.extend(message(b'Z', b"I"));
    // The proxy may stop reading midway (the flood): a failed write is its refusal.
    let _ = stream.write_all(&reply).await;
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest).await;
}

/// A client's session through a proxy in front of a server following `script`: every message the client
/// received, as (type byte, body).
async fn session(script: Script) -> Vec<(u8, Vec<u8>)> {
    let port = scripted_server(script).await;
    let mut config = Config::for_server("127.0.0.1", port, "app", "app");
    config.database.sslmode = SslMode::Disable;
    config.database.connect_timeout_secs = 10;
    let proxy = Proxy::start(&config, static_password("the-password"))
        .await
        .expect("proxy");
    let (mut client, served) = start_session(proxy).await;
    let mut received = Vec::new();
    if matches!(script, Script::CleartextOk) {
        // A session that logged in waits for queries: read up to ReadyForQuery, then hang up.
        while !received.ends_with(&message(b'Z', b"I")) {
            let mut buf = [0; 4096];
            let n = client.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed before ReadyForQuery");
            received.extend(&buf[..n]);
        }
        drop(client);
    } else {
        client.read_to_end(&mut received).await.expect("read");
    }
    served.await.expect("the session ended");
    let mut messages = Vec::new();
    let mut rest = received.as_slice();
    while !rest.is_empty() {
        messages.push(read_message(&mut rest).await);
    }
    messages
}

/// The one error among `messages`: its SQLSTATE and message.
fn the_error(messages: &[(u8, Vec<u8>)]) -> (String, String) {
    let errors: Vec<_> = messages.iter().filter(|(tag, _)| *tag == b'E').collect();
    assert_eq!(errors.len(), 1, "{messages:?}");
    let field = |code: u8| {
        errors[0]
            .1
            .split(|&b| b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
            .unwrap_or_default()
    };
    (field(b'C'), field(b'M'))
}

#[tokio::test]
async fn a_server_that_skips_its_scram_proof_is_not_trusted() {
    // Proves: AuthenticationOk without the server's SCRAM final message (its proof of the password) ends
    // the session with one 08006 error saying so; the client never sees AuthenticationOk or ReadyForQuery.
    let messages = session(Script::OkWithoutFinal).await;
    let (code, message) = the_error(&messages);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("without its final message"), "{message}");
    assert!(
        !messages.iter().any(|(tag, _)| matches!(tag, b'R' | b'Z')),
        "{messages:?}"
    );
}

#[tokio::test]
async fn a_scram_error_from_the_server_and_a_greedy_iteration_count_reach_the_client() {
    // Proves: a server-final `e=` reaches the client as one error carrying the server's words, and a
    // server-first asking for a million iterations as one error naming the count and the cap.
    let (code, message) = the_error(&session(Script::FinalWithError).await);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("invalid-proof"), "{message}");

    let (code, message) = the_error(&session(Script::GreedyIterations).await);
    assert_eq!(code, "08006", "{message}");
    assert!(
        message.contains("1000000") && message.contains("100000"),
        "{message}"
    );
}

#[tokio::test]
async fn the_client_gets_a_cancel_key_of_the_proxy_not_the_server_s() {
    // Proves: the BackendKeyData a client receives is not the server's (whose pid and secret would let
    // anyone who saw it cancel through any route), and is a well-formed 8-byte key with a positive pid.
    let messages = session(Script::CleartextOk).await;
    let keys: Vec<_> = messages.iter().filter(|(tag, _)| *tag == b'K').collect();
    assert_eq!(keys.len(), 1, "{messages:?}");
    let key = &keys[0].1;
    assert_eq!(key.len(), 8);
    assert_ne!(
        key.as_slice(),
        SERVER_KEY,
        "the server's own key reached the client"
    );
    assert!(key[0] < 0x80 && key[..4] != [0; 4], "{key:?}");
}

#[tokio::test]
async fn a_server_flooding_notices_before_ready_for_query_is_cut_off() {
    // Proves: more than 1 MiB of server messages between AuthenticationOk and ReadyForQuery (which the
    // proxy buffers to send at once) ends the session with one 08006 error instead of growing without
    // bound; the client never sees ReadyForQuery.
    let messages = session(Script::CleartextNoticeFlood).await;
    let (code, message) = the_error(&messages);
    assert_eq!(code, "08006", "{message}");
    assert!(message.contains("before ReadyForQuery"), "{message}");
    assert!(
        !messages.iter().any(|(tag, _)| *tag == b'Z'),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_stop_requested_before_the_listeners_first_run_still_stops_the_server() {
    // Proves: a server whose stop comes before its accept loops have run once (`pgwi exec` with a command
    // that fails at once) stops: the loops see the stop whenever they subscribe. On the single-threaded
    // runtime the loops cannot run before `serve` is called, which is the race made certain; a stop value
    // that no subscriber held was once dropped and `serve` never returned.
    let mut config = Config::for_server("127.0.0.1", 9, "app", "app");
    config.database.sslmode = SslMode::Disable;
    let proxy = Proxy::start(&config, static_password("the-password"))
        .await
        .expect("proxy");
    let server = pgwi_core::proxy::server::ProxyServer::new(proxy)
        .listen(pgwi_core::proxy::server::Listen::Tcp(
            "127.0.0.1:0".parse().expect("address"),
        ))
        .drain_timeout(std::time::Duration::from_secs(1))
        .bind()
        .await
        .expect("bind");
    let stopped = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        server.serve(async {}, std::future::pending()),
    )
    .await;
    assert!(stopped.is_ok(), "serve did not return after its stop");
}
