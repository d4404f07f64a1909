//! The server's errors as the client sees them: a refused login carries pgwi's diagnosis (the causes and
//! fixes of `pgwi doctor`), a later error the server's words with pgwi's fix as its hint. The words
//! themselves are `connect::error`'s, as for the pool.

use pgwi_credentials::Token;

use super::Proxy;
use crate::connect::{AuthenticationFailure, ConnectError, fix_for_sqlstate};
use crate::protocol::{self, Message};

impl Proxy {
    /// The server's error during authentication, as the client will see it: for a refused login the
    /// message is pgwi's diagnosis (the same causes and fixes as `pgwi doctor`), else the server's words
    /// with a hint when the SQLSTATE says what to do.
    pub(super) fn diagnose(
        &self,
        message: &Message,
        user: &str,
        token: &Token,
        database: Option<&str>,
    ) -> Diagnosed {
        let mut error = ServerError::parse(message);
        if error.code == "28P01" || error.code == "28000" {
            let target = &self.shared.target;
            let diagnosis = AuthenticationFailure::new(
                &target.host,
                target.port,
                user,
                database.unwrap_or_default(),
                &error.code,
                &error.field(b'M').unwrap_or_default(),
                token,
            );
            error.set(b'M', diagnosis.to_string());
        } else {
            error.add_hint(fix_for_sqlstate(&error.code));
        }
        error.diagnosed()
    }
}

/// The server's error after `AuthenticationOk`, with pgwi's hint when the SQLSTATE says what to do.
pub(super) fn with_hint(message: &Message) -> Diagnosed {
    let mut error = ServerError::parse(message);
    error.add_hint(ConnectError::fix_after_login(&error.code));
    error.diagnosed()
}

/// An `ErrorResponse` from the server: its fields, and its SQLSTATE.
struct ServerError {
    fields: Vec<(u8, String)>,
    code: String,
}

impl ServerError {
    fn parse(message: &Message) -> Self {
        let fields = protocol::parse_fields(&message.body);
        let code = field(&fields, b'C').unwrap_or_default();
        Self { fields, code }
    }

    fn field(&self, code: u8) -> Option<String> {
        field(&self.fields, code)
    }

    fn set(&mut self, code: u8, value: String) {
        match self.fields.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => *v = value,
            None => self.fields.push((code, value)),
        }
    }

    /// pgwi's fix as the hint, unless the server gave one.
    fn add_hint(&mut self, fix: Option<&str>) {
        if let Some(fix) = fix
            && self.field(b'H').is_none()
        {
            self.set(b'H', format!("pgwi: {fix}"));
        }
    }

    fn diagnosed(self) -> Diagnosed {
        let summary = format!(
            "{} (SQLSTATE {})",
            self.field(b'M').unwrap_or_default(),
            self.code
        );
        let borrowed: Vec<(u8, &str)> = self.fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Diagnosed {
            packet: protocol::error_response(&borrowed),
            summary,
        }
    }
}

fn field(fields: &[(u8, String)], code: u8) -> Option<String> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.clone())
}

pub(super) struct Diagnosed {
    pub(super) packet: Vec<u8>,
    pub(super) summary: String,
}
