//! The proxy's readers of a client's bytes before it has authenticated, for the fuzz targets (re-exported by
//! `crate::fuzzing`, feature `fuzzing`).

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::client::{self, ClientConn};
use super::scram::{self, Binding, LocalSecret};
use crate::fuzzing::{Replay, check_first_message, run};
use crate::protocol::MAX_PRE_AUTH_MESSAGE_LEN;

/// The certificate hash a SCRAM-SHA-256-PLUS client must bind to.
const END_POINT: [u8; 32] = [7; 32];

/// The local password's verifier, made once (PBKDF2 costs milliseconds).
fn secret() -> &'static LocalSecret {
    static SECRET: OnceLock<LocalSecret> = OnceLock::new();
    SECRET.get_or_init(|| LocalSecret::new("pencil").expect("a local secret"))
}

/// The proxy's negotiation with a plaintext client (its TLS and GSS requests answered `N`) over `data`;
/// checked as `read_startup` is.
pub fn negotiate(data: &[u8]) {
    let mut conn = ClientConn::Plain(Replay::new(data));
    let result = run(conn.negotiate(None));
    let ClientConn::Plain(client) = conn else {
        panic!("the plaintext stream was replaced without TLS to offer");
    };
    check_first_message(data, &client, &result);
}

/// The SCRAM server's parsing of a client's two messages. The first byte of `data` picks the channel
/// binding (not offered, declined over TLS, required); the rest is the client-first message, a 0xff byte,
/// and the client-final message, in which `{r}` stands for the nonce the server made and `{c}` for the
/// channel binding it expects, so that inputs reach the checks of the proof. No proof passes: the fuzzer
/// does not know the password.
pub fn scram_exchange(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let binding = match pick % 3 {
        0 => Binding::NotOffered,
        1 => Binding::Declined,
        _ => Binding::Required(&END_POINT),
    };
    let (first, last) = match rest.iter().position(|&b| b == 0xff) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let first = String::from_utf8_lossy(first);
    let Ok((server, server_first)) = scram::Server::start(secret(), &first, binding) else {
        return;
    };
    let nonce = server_first
        .strip_prefix("r=")
        .and_then(|rest| rest.split(',').next())
        .expect("a server-first message opening with the nonce");
    let mut expected: Vec<u8> = first
        .splitn(3, ',')
        .take(2)
        .flat_map(|part| [part.as_bytes(), b","].concat())
        .collect();
    if let Binding::Required(end_point) = binding {
        expected.extend(end_point);
    }
    let last = String::from_utf8_lossy(last)
        .replace("{r}", nonce)
        .replace("{c}", &B64.encode(expected));
    assert!(
        server.finish(&last).is_err(),
        "a proof accepted without the password: {first:?} then {last:?}"
    );
}

/// The local-password exchange with a client whose messages (SASLInitialResponse, SASLResponse) are
/// `data` after its first byte, which picks whether TLS is on (PLUS offered; PLUS alone when binding is
/// required) and whether the start-up named the proxy's user. It must fail (the fuzzer does not know the password) after reading at most two
/// messages within PostgreSQL's pre-authentication limit.
pub fn local_authentication(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let binding = (pick & 1 == 1).then_some((&END_POINT[..], pick & 4 == 4));
    let user_allowed = pick & 2 == 2;
    let mut client = Replay::new(rest);
    let result = run(super::local_auth::local_authentication(
        &mut client,
        secret(),
        "app",
        user_allowed,
        binding,
        std::time::Duration::ZERO,
    ));
    assert!(
        result.is_err(),
        "the local password proven without knowing it"
    );
    let consumed = rest.len() - client.input.len();
    assert!(
        consumed <= 2 * (1 + MAX_PRE_AUTH_MESSAGE_LEN),
        "read {consumed} bytes in a two-message exchange"
    );
}

/// The DER walker finding a certificate's signature algorithm, and the channel-binding hash built on it,
/// over `data` as a certificate: an OID found lies inside `data`, and the hash is SHA-256, -384 or -512.
pub fn signature_algorithm(data: &[u8]) {
    if let Some(oid) = client::signature_algorithm(data) {
        let (start, end) = (data.as_ptr() as usize, data.as_ptr() as usize + data.len());
        let at = oid.as_ptr() as usize;
        assert!(
            start <= at && at + oid.len() <= end,
            "an OID outside the certificate"
        );
    }
    if let Some(hash) = client::end_point_hash(data) {
        assert!(
            matches!(hash.len(), 32 | 48 | 64),
            "a {}-byte hash",
            hash.len()
        );
    }
}
