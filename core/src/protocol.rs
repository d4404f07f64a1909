//! The few pieces of the PostgreSQL wire protocol (3.0) that pgwi speaks itself: a client's first message
//! (start-up, TLS and GSS requests, cancel requests), framed messages, and error responses. Used by the
//! refusal endpoint and by the proxy.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

/// Protocol codes of the messages a client may send first (they have no type byte).
pub(crate) const SSL_REQUEST: i32 = 80877103;
pub(crate) const GSSENC_REQUEST: i32 = 80877104;
pub(crate) const CANCEL_REQUEST: i32 = 80877102;
/// The largest first message read (the server's own limit is 10000 bytes).
pub(crate) const MAX_STARTUP_LEN: usize = 10_000;
/// The largest message read from the server before the session is handed over to byte copying.
pub(crate) const MAX_MESSAGE_LEN: usize = 1 << 20;

/// Start-up parameters, names and values as bytes, in order.
pub(crate) type Params = Vec<(Vec<u8>, Vec<u8>)>;

/// The limit PostgreSQL puts on a SASL message from a client that has not yet authenticated
/// (`PG_MAX_AUTH_TOKEN_LENGTH`).
pub(crate) const MAX_PRE_AUTH_MESSAGE_LEN: usize = 65_535;

/// One packet a client may send before its start-up is done (they have no type byte).
#[derive(Debug)]
pub(crate) enum FirstPacket {
    /// An SSLRequest: the client asks for TLS.
    SslRequest,
    /// A GSSENCRequest: the client asks for GSSAPI encryption.
    GssEncRequest,
    /// A start-up message: protocol version and parameters (`user`, `database`, …), each key once, in
    /// order, as bytes: PostgreSQL takes any encoding (the client's), so they are forwarded as they came.
    Startup { version: i32, params: Params },
    /// A cancel request: the bytes after the code (backend pid, then the secret key).
    Cancel(Vec<u8>),
}

/// What a client asked for with its first message, after any TLS and GSS requests were answered `N`.
#[derive(Debug)]
pub(crate) enum FirstMessage {
    /// A start-up message: protocol version and parameters, as in [`FirstPacket::Startup`].
    Startup { version: i32, params: Params },
    /// A cancel request: the bytes after the code (backend pid, then the secret key).
    Cancel(Vec<u8>),
}

/// Why a client's first message could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartupError {
    /// The bytes are not a PostgreSQL start-up (PostgreSQL closes such a connection without a word).
    #[error("not a PostgreSQL start-up: {0}")]
    Garbage(String),
    /// A framed start-up whose parameters are malformed or name a key twice (PostgreSQL answers `08P01`
    /// "invalid startup packet layout"). PostgreSQL itself keeps the last of a repeated key; a proxy that
    /// checked the first `user` and forwarded both would let the client choose its role.
    #[error("invalid startup packet layout: {0}")]
    Layout(String),
    /// A well-framed first message with a protocol version this side does not speak (PostgreSQL answers
    /// it with an error). A second SSLRequest or GSSENCRequest is one too, as in PostgreSQL.
    #[error("protocol version {major}.{minor} (3.x expected)", major = .0 >> 16, minor = .0 & 0xffff)]
    Version(i32),
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one packet a client sends before its start-up: TLS and GSS requests, a cancel request, or the
/// start-up itself. Lengths outside 8 to [`MAX_STARTUP_LEN`] bytes are refused before anything is allocated.
pub(crate) async fn read_first_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<FirstPacket, StartupError> {
    let len = stream.read_i32().await?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| (8..=MAX_STARTUP_LEN).contains(len))
        .ok_or_else(|| {
            StartupError::Garbage(format!(
                "a first message of {len} bytes (8 to {MAX_STARTUP_LEN} expected)"
            ))
        })?;
    let code = stream.read_i32().await?;
    let mut rest = vec![0; len - 8];
    stream.read_exact(&mut rest).await?;
    match code {
        SSL_REQUEST if rest.is_empty() => Ok(FirstPacket::SslRequest),
        GSSENC_REQUEST if rest.is_empty() => Ok(FirstPacket::GssEncRequest),
        SSL_REQUEST | GSSENC_REQUEST => Err(StartupError::Garbage(format!(
            "an encryption request of {len} bytes (8 expected)"
        ))),
        CANCEL_REQUEST => Ok(FirstPacket::Cancel(rest)),
        version if version >> 16 == 3 => Ok(FirstPacket::Startup {
            version,
            params: parse_params(&rest)?,
        }),
        other => Err(StartupError::Version(other)),
    }
}

/// Whether a client already asked for TLS and for GSS encryption: PostgreSQL takes each at most once per
/// connection (and neither after TLS is on), and answers a repeat as an unknown protocol version.
#[derive(Debug, Default)]
pub(crate) struct Negotiated {
    pub(crate) ssl_done: bool,
    pub(crate) gss_done: bool,
}

impl Negotiated {
    /// Notes an SSLRequest or GSSENCRequest; a repeat is the error PostgreSQL gives it.
    pub(crate) fn request(&mut self, packet: &FirstPacket) -> Result<(), StartupError> {
        let (done, code) = match packet {
            FirstPacket::SslRequest => (&mut self.ssl_done, SSL_REQUEST),
            FirstPacket::GssEncRequest => (&mut self.gss_done, GSSENC_REQUEST),
            _ => return Ok(()),
        };
        if std::mem::replace(done, true) {
            return Err(StartupError::Version(code));
        }
        Ok(())
    }
}

/// Reads the client's first message, answering `N` (no TLS, no GSS encryption) to the requests for them.
pub(crate) async fn read_startup<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<FirstMessage, StartupError> {
    let mut negotiated = Negotiated::default();
    loop {
        let packet = read_first_packet(stream).await?;
        negotiated.request(&packet)?;
        match packet {
            FirstPacket::SslRequest | FirstPacket::GssEncRequest => stream.write_all(b"N").await?,
            FirstPacket::Cancel(key) => return Ok(FirstMessage::Cancel(key)),
            FirstPacket::Startup { version, params } => {
                return Ok(FirstMessage::Startup { version, params });
            }
        }
    }
}

/// `key\0value\0…\0` into pairs; a key given twice is refused (see [`StartupError::Layout`]).
pub(crate) fn parse_params(body: &[u8]) -> Result<Params, StartupError> {
    let layout = |what: String| StartupError::Layout(what);
    let body = body
        .strip_suffix(&[0])
        .ok_or_else(|| layout("expected terminator as last byte".into()))?;
    if body.is_empty() {
        return Ok(Vec::new());
    }
    let body = body
        .strip_suffix(&[0])
        .ok_or_else(|| layout("expected terminator as last byte".into()))?;
    let fields: Vec<&[u8]> = body.split(|&b| b == 0).collect();
    if !fields.len().is_multiple_of(2) {
        return Err(layout("a parameter name without a value".into()));
    }
    // A set, not a scan of what was seen: 2 500 distinct keys fit in 10 000 bytes, and a quadratic check
    // would let one start-up hold a runtime thread for milliseconds.
    let mut seen = std::collections::HashSet::with_capacity(fields.len() / 2);
    let mut params: Params = Vec::with_capacity(fields.len() / 2);
    for pair in fields.chunks(2) {
        if pair[0].is_empty() {
            return Err(layout("an empty parameter name".into()));
        }
        if !seen.insert(pair[0]) {
            // The name is the client's: shown quoted and cut short, it cannot forge log lines.
            let name: String = String::from_utf8_lossy(pair[0]).chars().take(64).collect();
            return Err(layout(format!("parameter {name:?} given more than once")));
        }
        params.push((pair[0].to_vec(), pair[1].to_vec()));
    }
    Ok(params)
}

/// A start-up message with `version` and `params`.
pub(crate) fn startup_message(version: i32, params: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut body = version.to_be_bytes().to_vec();
    for (key, value) in params {
        body.extend(key);
        body.push(0);
        body.extend(value);
        body.push(0);
    }
    body.push(0);
    with_length(None, body)
}

/// A cancel request carrying `key` (backend pid and secret key, as the client sent them).
pub(crate) fn cancel_request(key: &[u8]) -> Vec<u8> {
    let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
    body.extend(key);
    with_length(None, body)
}

/// An SSLRequest.
pub(crate) fn ssl_request() -> Vec<u8> {
    with_length(None, SSL_REQUEST.to_be_bytes().to_vec())
}

/// A framed message: type byte (if any), Int32 length including itself, body.
pub(crate) fn with_length(tag: Option<u8>, body: Vec<u8>) -> Vec<u8> {
    let mut packet = Vec::with_capacity(body.len() + 5);
    packet.extend(tag);
    packet.extend(
        i32::try_from(body.len() + 4)
            .unwrap_or(i32::MAX)
            .to_be_bytes(),
    );
    packet.extend(body);
    packet
}

/// A `Terminate` message: the frontend ends its session.
pub(crate) fn terminate() -> Vec<u8> {
    with_length(Some(b'X'), Vec::new())
}

/// One message after the start-up: its type byte and body.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) tag: u8,
    pub(crate) body: Vec<u8>,
}

impl Message {
    /// The message as it was on the wire.
    pub(crate) fn encode(&self) -> Vec<u8> {
        with_length(Some(self.tag), self.body.clone())
    }

    /// The Int32 at `offset` of the body.
    pub(crate) fn int32(&self, offset: usize) -> Option<i32> {
        let bytes = self.body.get(offset..offset + 4)?;
        Some(i32::from_be_bytes(bytes.try_into().ok()?))
    }
}

/// Reads one framed message of at most [`MAX_MESSAGE_LEN`] bytes.
pub(crate) async fn read_message<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Message> {
    read_message_within(stream, MAX_MESSAGE_LEN).await
}

/// Reads one framed message of at most `limit` bytes (length field included); a longer one is an error
/// before anything is allocated.
pub(crate) async fn read_message_within<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: usize,
) -> std::io::Result<Message> {
    let tag = stream.read_u8().await?;
    let len = stream.read_i32().await?;
    let len = usize::try_from(len)
        .ok()
        .filter(|len| (4..=limit).contains(len))
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("a message of type {:?} with length {len}", tag as char),
            )
        })?;
    let mut body = vec![0; len - 4];
    stream.read_exact(&mut body).await?;
    Ok(Message { tag, body })
}

/// Authentication request codes (`R` messages) the proxy sends or answers.
pub(crate) const AUTH_OK: i32 = 0;
pub(crate) const AUTH_CLEARTEXT: i32 = 3;
pub(crate) const AUTH_MD5: i32 = 5;
pub(crate) const AUTH_SASL: i32 = 10;
pub(crate) const AUTH_SASL_CONTINUE: i32 = 11;
pub(crate) const AUTH_SASL_FINAL: i32 = 12;

/// An authentication request (`R`) with `code` and `data` after it.
pub(crate) fn authentication(code: i32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend(data);
    with_length(Some(b'R'), body)
}

/// `AuthenticationSASL` offering `mechanisms`, in order of preference.
pub(crate) fn sasl_request(mechanisms: &[&str]) -> Vec<u8> {
    let mut list = Vec::new();
    for mechanism in mechanisms {
        list.extend(mechanism.as_bytes());
        list.push(0);
    }
    list.push(0);
    authentication(AUTH_SASL, &list)
}

/// The mechanisms an `AuthenticationSASL` body offers (after its code).
pub(crate) fn sasl_mechanisms(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect()
}

/// A `SASLInitialResponse` choosing `mechanism` with its first message.
pub(crate) fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend(i32::try_from(data.len()).unwrap_or(i32::MAX).to_be_bytes());
    body.extend(data);
    with_length(Some(b'p'), body)
}

/// A `SASLInitialResponse` body: the mechanism and its data, whose length must be what the message says
/// (`-1`: none); `None` for anything else.
pub(crate) fn parse_sasl_initial_response(body: &[u8]) -> Option<(&str, &[u8])> {
    let end = body.iter().position(|&b| b == 0)?;
    let mechanism = std::str::from_utf8(&body[..end]).ok()?;
    let rest = &body[end + 1..];
    let len = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    let data = &rest[4..];
    match usize::try_from(len) {
        Ok(len) if len == data.len() => Some((mechanism, data)),
        Err(_) if len == -1 && data.is_empty() => Some((mechanism, data)),
        _ => None,
    }
}

/// An `ErrorResponse` with these fields (`S` severity, `C` SQLSTATE, `M` message, `H` hint, …).
pub(crate) fn error_response(fields: &[(u8, &str)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in fields {
        body.push(*field);
        body.extend(value.bytes().filter(|&b| b != 0));
        body.push(0);
    }
    body.push(0);
    with_length(Some(b'E'), body)
}

/// A FATAL `ErrorResponse` with `code` and `message`.
pub(crate) fn fatal(code: &str, message: &str) -> Vec<u8> {
    error_response(&[
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', code),
        (b'M', message),
    ])
}

/// The fields of an `ErrorResponse` or `NoticeResponse` body.
pub(crate) fn parse_fields(body: &[u8]) -> Vec<(u8, String)> {
    body.split(|&b| b == 0)
        .filter_map(|field| {
            let (&code, value) = field.split_first()?;
            Some((code, String::from_utf8_lossy(value).into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `read_startup` makes of `bytes` sent by a client, and what it answered.
    async fn first(bytes: &[u8]) -> (Result<FirstMessage, StartupError>, Vec<u8>) {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(bytes).await.expect("write");
        drop(client.shutdown().await);
        let result = read_startup(&mut server).await;
        drop(server);
        let mut answered = Vec::new();
        client.read_to_end(&mut answered).await.expect("read");
        (result, answered)
    }

    fn startup(params: &[(&[u8], &[u8])]) -> Vec<u8> {
        let params: Vec<_> = params
            .iter()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        startup_message(196_608, &params)
    }

    #[tokio::test]
    async fn a_start_up_after_an_ssl_request_is_read_with_its_parameters() {
        // Proves: an SSLRequest is answered `N` and the start-up after it is read, its parameters in order,
        // including a value that is not UTF-8 (PostgreSQL takes the client's encoding).
        let mut bytes = ssl_request();
        bytes.extend(startup(&[
            (b"user", b"app"),
            (b"application_name", b"caf\xe9"),
        ]));
        let (result, answered) = first(&bytes).await;
        let Ok(FirstMessage::Startup { version, params }) = result else {
            panic!("not a start-up: {result:?}");
        };
        assert_eq!(version, 196_608);
        assert_eq!(params[0], (b"user".to_vec(), b"app".to_vec()));
        assert_eq!(params[1].1, b"caf\xe9");
        assert_eq!(answered, b"N");
    }

    #[tokio::test]
    async fn short_oversized_and_unknown_first_messages_are_refused() {
        // Proves: a length below 8 or above the limit, a protocol version other than 3.x, and unterminated
        // parameters are each one error (no panic, no read past the limit); a truncated message is an I/O
        // error; a cancel request is recognised with its key.
        let short = 4_i32.to_be_bytes();
        assert!(matches!(
            first(&short).await.0,
            Err(StartupError::Garbage(_))
        ));
        let oversized = [&20_000_i32.to_be_bytes()[..], &196_608_i32.to_be_bytes()].concat();
        assert!(matches!(
            first(&oversized).await.0,
            Err(StartupError::Garbage(_))
        ));
        let http = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(matches!(first(http).await.0, Err(StartupError::Garbage(_))));
        let v2 = with_length(None, [&0x0002_0000_i32.to_be_bytes()[..], b"\0"].concat());
        assert!(matches!(
            first(&v2).await.0,
            Err(StartupError::Version(0x0002_0000))
        ));
        let unterminated = with_length(None, [&196_608_i32.to_be_bytes()[..], b"user"].concat());
        assert!(matches!(
            first(&unterminated).await.0,
            Err(StartupError::Layout(_))
        ));
        let odd = with_length(None, [&196_608_i32.to_be_bytes()[..], b"user\0\0"].concat());
        assert!(matches!(first(&odd).await.0, Err(StartupError::Layout(_))));
        let truncated = &startup(&[(b"user", b"app")])[..12];
        assert!(matches!(first(truncated).await.0, Err(StartupError::Io(_))));
        let cancel = cancel_request(&[0, 0, 0, 7, 1, 2, 3, 4]);
        assert!(
            matches!(first(&cancel).await.0, Ok(FirstMessage::Cancel(key)) if key == [0, 0, 0, 7, 1, 2, 3, 4])
        );
    }

    #[tokio::test]
    async fn a_start_up_naming_a_key_twice_is_refused_whatever_the_case_of_the_repeat() {
        // Proves: a repeated `user` or `database` (PostgreSQL would take the last) is a layout error naming
        // the key, and so is an empty key; keys differing in case are distinct, as in PostgreSQL.
        for (key, repeat) in [(&b"user"[..], &b"user"[..]), (b"database", b"database")] {
            let bytes = startup(&[(key, b"a"), (b"application_name", b"x"), (repeat, b"b")]);
            let Err(StartupError::Layout(why)) = first(&bytes).await.0 else {
                panic!("a repeated {key:?} was accepted");
            };
            assert!(why.contains(&*String::from_utf8_lossy(key)), "{why}");
        }
        assert!(matches!(
            first(&startup(&[(b"", b"x")])).await.0,
            Err(StartupError::Layout(_))
        ));
        let distinct = startup(&[(b"user", b"a"), (b"USER", b"b")]);
        assert!(matches!(
            first(&distinct).await.0,
            Ok(FirstMessage::Startup { .. })
        ));
    }

    #[tokio::test]
    async fn a_second_tls_or_gss_request_is_an_unsupported_protocol_as_in_postgresql() {
        // Proves: one SSLRequest and one GSSENCRequest are each answered `N`; a second of either is the
        // "unsupported protocol" error PostgreSQL gives it (its code read as a version), and an
        // encryption request with a body is garbage.
        let mut bytes = ssl_request();
        bytes.extend(with_length(None, GSSENC_REQUEST.to_be_bytes().to_vec()));
        bytes.extend(startup(&[(b"user", b"app")]));
        let (result, answered) = first(&bytes).await;
        assert!(
            matches!(result, Ok(FirstMessage::Startup { .. })),
            "{result:?}"
        );
        assert_eq!(answered, b"NN");
        let twice = [ssl_request(), ssl_request()].concat();
        let (result, answered) = first(&twice).await;
        assert!(
            matches!(result, Err(StartupError::Version(SSL_REQUEST))),
            "{result:?}"
        );
        assert_eq!(answered, b"N");
        let padded = with_length(None, [&SSL_REQUEST.to_be_bytes()[..], &[0; 4]].concat());
        assert!(matches!(
            first(&padded).await.0,
            Err(StartupError::Garbage(_))
        ));
    }

    #[tokio::test]
    async fn messages_above_the_limit_are_refused_without_reading_them() {
        // Proves: a server message claiming more than the limit, or less than its own length field, is an
        // error rather than an allocation of that size.
        let mut huge = vec![b'R'];
        huge.extend(i32::MAX.to_be_bytes());
        let error = read_message(&mut huge.as_slice())
            .await
            .expect_err("refused");
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
        let mut negative = vec![b'R'];
        negative.extend(2_i32.to_be_bytes());
        assert!(read_message(&mut negative.as_slice()).await.is_err());
        let mut ok = with_length(Some(b'R'), 0_i32.to_be_bytes().to_vec());
        ok.extend(b"rest");
        let message = read_message(&mut ok.as_slice()).await.expect("a message");
        assert_eq!((message.tag, message.int32(0)), (b'R', Some(0)));
    }

    #[test]
    fn sasl_messages_round_trip_and_a_lying_length_is_refused() {
        // Proves: an initial response made here parses back to its mechanism and data; one whose length
        // field disagrees with its data, or that has no length or no terminator, is refused; `-1` with no
        // data is accepted, as the protocol allows.
        let message = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc");
        let body = &message[5..];
        assert_eq!(
            parse_sasl_initial_response(body),
            Some(("SCRAM-SHA-256", &b"n,,n=,r=abc"[..]))
        );
        let mut lying = body.to_vec();
        let at = lying.len() - 11 - 4;
        lying[at..at + 4].copy_from_slice(&100_i32.to_be_bytes());
        assert_eq!(parse_sasl_initial_response(&lying), None);
        assert_eq!(parse_sasl_initial_response(b"SCRAM-SHA-256"), None);
        assert_eq!(parse_sasl_initial_response(b"SCRAM-SHA-256\0\0\0"), None);
        let none = [&b"X\0"[..], &(-1_i32).to_be_bytes()].concat();
        assert_eq!(parse_sasl_initial_response(&none), Some(("X", &b""[..])));
        assert_eq!(
            sasl_mechanisms(&sasl_request(&["A", "B"])[9..]),
            vec!["A".to_owned(), "B".to_owned()]
        );
    }
}
