//! `pgwi_core::proxy` against a scripted server: the SCRAM-SHA-256 exchanges a real PostgreSQL does not
//! misbehave in (no final message, an error in it, a greedy iteration count), each of which must reach the
//! client as one error instead of a session.

use pgwi_core::Config;
use pgwi_core::config::SslMode;
use pgwi_core::proxy::{Client, Proxy};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::support::static_password;

/// How the scripted server misbehaves after the client's proof.
#[derive(Clone, Copy)]
enum Script {
    /// `AuthenticationOk` without the SASLFinal that proves the server knows the password.
    OkWithoutFinal,
    /// A SASLFinal carrying `e=`, a server-side error.
    FinalWithError,
    /// A server-first asking for a million iterations (the proxy stops there).
    GreedyIterations,
}

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
    let (mut client, end) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(async move {
        let who = Client::local("test");
        proxy.serve(end, who).await;
    });
    let mut body = 196_608_i32.to_be_bytes().to_vec();
    body.extend(b"user\0app\0database\0app\0\0");
    let mut startup = i32::try_from(body.len() + 4)
        .expect("length")
        .to_be_bytes()
        .to_vec();
    startup.extend(body);
    client.write_all(&startup).await.expect("start-up");
    served.await.expect("the session ended");
    let mut received = Vec::new();
    client.read_to_end(&mut received).await.expect("read");
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
