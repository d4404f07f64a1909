//! The connection test (`--run-connection-test`): one login to the server before serving, exactly as a
//! client's session would log in (the configured user and database, a token usable now, the same TLS), so
//! a proxy that cannot reach its database fails at start with the reason instead of reporting ready.

use pgwi_credentials::TokenSource as _;
use tokio::io::AsyncWriteExt as _;

use super::Proxy;
use super::accounting::SessionLog;
use super::session::SessionError;
use crate::protocol;

/// The protocol version of the test's start-up (3.0).
const PROTOCOL_3_0: i32 = 3 << 16;

/// Why the connection test failed: what a client would have been told, in one line (secret-free).
#[derive(Debug, thiserror::Error)]
#[error("the connection test failed: {0}")]
pub struct ConnectionTestError(String);

impl Proxy {
    /// Logs in to the server once as a session would, then ends that session with a `Terminate`. The error
    /// is the one a client would get: pgwi's diagnosis for a refused login, the server's words and fix for
    /// anything else (a database that does not exist is named), the credential's error without a token.
    pub async fn test_connection(&self) -> Result<(), ConnectionTestError> {
        // What a client would have been sent, read back for the error's words.
        let mut sent = Vec::new();
        let mut log = SessionLog::new("connection test".into());
        log.kind = "connection_test";
        log.database = self.database().map(str::to_owned);
        let outcome = self.log_in_once(&mut sent, &mut log).await;
        outcome.map_err(|error| ConnectionTestError(describe(&sent, &error)))
    }

    async fn log_in_once(
        &self,
        sent: &mut Vec<u8>,
        log: &mut SessionLog,
    ) -> Result<(), SessionError> {
        let token = self.token_for_server(sent, &mut None).await?;
        let Some(user) = self.user_for(&token) else {
            let kind = self.shared.keeper.credential().info().kind;
            return Err(SessionError::Connect(
                crate::connect::ConnectError::UserNotDerivable { source_kind: kind },
            ));
        };
        let mut params = vec![(b"user".to_vec(), user.clone().into_bytes())];
        if let Some(database) = self.database() {
            params.push((b"database".to_vec(), database.as_bytes().to_vec()));
        }
        params.push((
            b"application_name".to_vec(),
            b"pgwi proxy connection test".to_vec(),
        ));
        let mut upstream = self.open_upstream(sent, PROTOCOL_3_0, &params).await?;
        self.log_in(sent, &mut upstream, &token, &user, log).await?;
        let _ = upstream.write_all(&protocol::terminate()).await;
        let _ = upstream.shutdown().await;
        Ok(())
    }
}

/// The error a client would have read: the last `ErrorResponse`'s message, detail and hint with its
/// SQLSTATE (after `AuthenticationOk`, a server refusing the database sends it last), else the session's
/// error.
fn describe(sent: &[u8], error: &SessionError) -> String {
    let fields = last_error_fields(sent).unwrap_or_default();
    let field = |code: u8| {
        fields
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, value)| value.as_str())
    };
    let Some(message) = field(b'M') else {
        return error.to_string();
    };
    let mut text = message.to_owned();
    for code in [b'D', b'H'] {
        if let Some(more) = field(code) {
            text.push_str("; ");
            text.push_str(more);
        }
    }
    match field(b'C') {
        Some(sqlstate) => format!("{text} (SQLSTATE {sqlstate})"),
        None => text,
    }
}

/// The fields of the last `ErrorResponse` among the messages in `sent`.
fn last_error_fields(mut sent: &[u8]) -> Option<Vec<(u8, String)>> {
    let mut last = None;
    while sent.len() >= 5 {
        let length = u32::from_be_bytes([sent[1], sent[2], sent[3], sent[4]]) as usize;
        let Some(body) = sent.get(5..1 + length.max(4)) else {
            break;
        };
        if sent[0] == b'E' {
            last = Some(protocol::parse_fields(body));
        }
        sent = &sent[1 + length.max(4)..];
    }
    last
}
