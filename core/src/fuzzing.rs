//! Entry points for the fuzz targets in `core/fuzz` (feature `fuzzing`, off by default; not an API).
//!
//! Each function feeds arbitrary bytes to one of the decoders that read what a client sends before it has
//! authenticated, over an in-memory stream, and checks what must hold whatever the bytes: no panic, nothing
//! read past a limit, a start-up accepted only with each key once and exactly as it was framed, a SCRAM
//! proof never accepted without the password. A failed check panics, which the fuzzer reports as a crash.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::protocol::{self, FirstMessage, MAX_STARTUP_LEN, Params, StartupError};

pub use crate::proxy::fuzzing::{
    local_authentication, negotiate, scram_exchange, signature_algorithm,
};

/// A client as an in-memory stream: what it sends (`input`, read from the front), and what it was answered.
#[derive(Debug)]
pub(crate) struct Replay<'a> {
    pub(crate) input: &'a [u8],
    pub(crate) answered: Vec<u8>,
}

impl<'a> Replay<'a> {
    pub(crate) fn new(input: &'a [u8]) -> Self {
        Self {
            input,
            answered: Vec::new(),
        }
    }
}

impl AsyncRead for Replay<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.input).poll_read(cx, buf)
    }
}

impl AsyncWrite for Replay<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.answered.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs a future over in-memory streams to its end: such streams never wait, so one poll finishes it.
pub(crate) fn run<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a decoder waited on an in-memory stream"),
    }
}

/// `protocol::read_startup` (the refusal endpoint's reader of a client's first messages) over `data`.
pub fn read_startup(data: &[u8]) {
    let mut client = Replay::new(data);
    let result = run(protocol::read_startup(&mut client));
    check_first_message(data, &client, &result);
}

/// What holds for any first message read from `data` by `read_startup` or the proxy's negotiation: each TLS
/// or GSS request answered with one byte, at most one of each; no packet longer than the limit read; a
/// start-up accepted only as protocol 3 with each key once, non-empty and framed exactly as read.
pub(crate) fn check_first_message(
    data: &[u8],
    client: &Replay<'_>,
    result: &Result<FirstMessage, StartupError>,
) {
    let consumed = &data[..data.len() - client.input.len()];
    let answers = client.answered.len();
    assert!(answers <= 2, "{answers} answers to encryption requests");
    assert!(
        client.answered.iter().all(|&b| b == b'N'),
        "answered {:?} without TLS to offer",
        client.answered
    );
    assert!(
        consumed.len() <= 8 * answers + MAX_STARTUP_LEN,
        "read {} bytes for {answers} requests and one packet",
        consumed.len()
    );
    let last = &consumed[(8 * answers).min(consumed.len())..];
    match result {
        Ok(FirstMessage::Startup { version, params }) => {
            assert_eq!(version >> 16, 3, "a start-up of protocol {version:#x}");
            check_params(params);
            assert_eq!(
                protocol::startup_message(*version, params),
                last,
                "the start-up accepted is not the one framed"
            );
        }
        Ok(FirstMessage::Cancel(key)) => {
            assert_eq!(
                protocol::cancel_request(key),
                last,
                "the cancel request accepted is not the one framed"
            );
        }
        Err(_) => {}
    }
}

/// Keys non-empty, each once, neither keys nor values holding a NUL.
fn check_params(params: &Params) {
    for (i, (key, value)) in params.iter().enumerate() {
        assert!(!key.is_empty(), "an empty key accepted");
        assert!(
            !key.contains(&0) && !value.contains(&0),
            "a NUL inside a parameter"
        );
        assert!(
            params[..i].iter().all(|(seen, _)| seen != key),
            "key {key:?} accepted twice"
        );
    }
}

/// The start-up parameters' decoder over `data` (a start-up's body after its version): what it accepts
/// encodes back to `data`.
pub fn parse_params(data: &[u8]) {
    if let Ok(params) = protocol::parse_params(data) {
        check_params(&params);
        let encoded = protocol::startup_message(0, &params);
        assert_eq!(
            &encoded[8..],
            data,
            "the parameters accepted are not those framed"
        );
    }
}

/// `read_message_within` over `data`, message after message, with a limit picked by its first byte
/// (PostgreSQL's pre-authentication limit, the proxy's limit for server messages, or a small one from the
/// next two bytes); each message read must be within the limit and encode back to the bytes it came from.
/// The fields of each are parsed as an `ErrorResponse`'s would be.
pub fn read_messages(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (limit, rest) = match pick % 3 {
        0 => (protocol::MAX_PRE_AUTH_MESSAGE_LEN, rest),
        1 => (protocol::MAX_MESSAGE_LEN, rest),
        _ => match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
            _ => return,
        },
    };
    let mut stream = rest;
    loop {
        let before = stream;
        let Ok(message) = run(protocol::read_message_within(&mut stream, limit)) else {
            return;
        };
        let consumed = &before[..before.len() - stream.len()];
        assert!(
            consumed.len() <= limit + 1,
            "read {} bytes within {limit}",
            consumed.len()
        );
        assert_eq!(message.encode(), consumed, "a message not as framed");
        let _ = message.int32(0);
        let _ = protocol::parse_fields(&message.body);
    }
}
