//! The proxy's own door for remote listeners: SCRAM-SHA-256 against the local password before the server
//! is contacted, SCRAM-SHA-256-PLUS (bound to the proxy's certificate) when the client's hop is TLS.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};

use super::session::SessionError;
use super::{LocalSecret, scram};
use crate::protocol;

/// How long a client that failed the local password waits for its answer.
pub(super) const FAILURE_DELAY: Duration = Duration::from_secs(1);

/// SCRAM-SHA-256 against the proxy's local password, before the server is contacted; over TLS,
/// SCRAM-SHA-256-PLUS is offered first, bound to the proxy's certificate (`binding`: its hash, and whether
/// SCRAM-SHA-256-PLUS is the only mechanism offered).
/// `user_allowed`: whether the start-up names the user the proxy logs in as; if not, the exchange runs to its
/// end and fails as a wrong password does, so the reply does not tell which was wrong. Each client message
/// is read within PostgreSQL's limit for a client that has not authenticated.
pub(super) async fn local_authentication<S>(
    client: &mut S,
    secret: &LocalSecret,
    user: &str,
    user_allowed: bool,
    binding: Option<(&[u8], bool)>,
    failure_delay: Duration,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let offered: &[&str] = match binding {
        Some((_, true)) => &[scram::MECHANISM_PLUS],
        Some((_, false)) => &[scram::MECHANISM_PLUS, scram::MECHANISM],
        None => &[scram::MECHANISM],
    };
    client.write_all(&protocol::sasl_request(offered)).await?;
    let end_point = binding.map(|(end_point, _)| end_point);
    let result = async {
        let server_final = prove_password(client, secret, offered, end_point).await?;
        if !user_allowed {
            return Err(SessionError::Client(
                "the start-up names another user than the proxy's".into(),
            ));
        }
        let server_final =
            protocol::authentication(protocol::AUTH_SASL_FINAL, server_final.as_bytes());
        client.write_all(&server_final).await?;
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Ok(()),
        Err(SessionError::Io(error)) if error.kind() != io::ErrorKind::InvalidData => {
            Err(SessionError::Io(error))
        }
        Err(error) => Err(refuse_after_delay(client, user, error, failure_delay).await),
    }
}

/// The client's two SCRAM messages, each within PostgreSQL's pre-authentication limit: its choice among
/// the `offered` mechanisms and first message, then its proof; the server-final message to send.
async fn prove_password<S>(
    client: &mut S,
    secret: &LocalSecret,
    offered: &[&str],
    end_point: Option<&[u8]>,
) -> Result<String, SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let initial = protocol::read_message_within(client, protocol::MAX_PRE_AUTH_MESSAGE_LEN).await?;
    let not_initial = || SessionError::Client("not a SCRAM-SHA-256 initial response".into());
    if initial.tag != b'p' {
        return Err(not_initial());
    }
    let (mechanism, data) =
        protocol::parse_sasl_initial_response(&initial.body).ok_or_else(not_initial)?;
    let binding = match (mechanism, end_point) {
        (scram::MECHANISM_PLUS, Some(end_point)) => scram::Binding::Required(end_point),
        (scram::MECHANISM, Some(_)) if offered.contains(&scram::MECHANISM) => {
            scram::Binding::Declined
        }
        (scram::MECHANISM, None) => scram::Binding::NotOffered,
        _ => return Err(not_initial()),
    };
    let (server, server_first) =
        scram::Server::start(secret, &String::from_utf8_lossy(data), binding)?;
    let server_first =
        protocol::authentication(protocol::AUTH_SASL_CONTINUE, server_first.as_bytes());
    client.write_all(&server_first).await?;
    let last = protocol::read_message_within(client, protocol::MAX_PRE_AUTH_MESSAGE_LEN).await?;
    if last.tag != b'p' {
        return Err(SessionError::Client("not a SASL response".into()));
    }
    Ok(server.finish(&String::from_utf8_lossy(&last.body))?)
}

/// Answers a failed exchange as PostgreSQL does, after `delay`: one 28P01 that says only that the password
/// failed; why (`error`) is for the log.
async fn refuse_after_delay<S>(
    client: &mut S,
    user: &str,
    error: SessionError,
    delay: Duration,
) -> SessionError
where
    S: AsyncWrite + Unpin,
{
    // As PostgreSQL's auth_delay: each failed guess costs the guesser a second, while this client holds
    // one of its address's few start-up slots, so guessing is slow however it is spread.
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let message = format!("password authentication failed for user \"{user}\"");
    let _ = client.write_all(&protocol::fatal("28P01", &message)).await;
    SessionError::Refused(format!("local password: {error}"))
}
