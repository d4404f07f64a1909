//! The server's errors as the client sees them: a refused login carries pgwi's diagnosis (the causes and
//! fixes of `pgwi doctor`), a later error the server's words with pgwi's fix as its hint.

use pgwi_credentials::Token;

use super::Proxy;
use crate::connect::{self, AuthenticationFailure, fix_for_sqlstate};
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
        let mut fields = protocol::parse_fields(&message.body);
        let code = field(&fields, b'C').unwrap_or_default();
        let server_message = field(&fields, b'M').unwrap_or_default();
        if code == "28P01" || code == "28000" {
            let diagnosis = AuthenticationFailure {
                host: self.inner.target.host.clone(),
                port: self.inner.target.port,
                user: user.to_owned(),
                database: database.unwrap_or_default().to_owned(),
                code: code.clone(),
                message: server_message,
                audience: connect::audience(token),
            }
            .to_string();
            set_field(&mut fields, b'M', diagnosis);
        } else if let Some(fix) = fix_for_sqlstate(&code)
            && field(&fields, b'H').is_none()
        {
            set_field(&mut fields, b'H', format!("pgwi: {fix}"));
        }
        diagnosed(&fields, &code)
    }
}

fn field(fields: &[(u8, String)], code: u8) -> Option<String> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| v.clone())
}

fn set_field(fields: &mut Vec<(u8, String)>, code: u8, value: String) {
    match fields.iter_mut().find(|(c, _)| *c == code) {
        Some((_, v)) => *v = value,
        None => fields.push((code, value)),
    }
}

/// The server's error after `AuthenticationOk`, with pgwi's hint when the SQLSTATE says what to do.
pub(super) fn with_hint(message: &Message) -> Diagnosed {
    let mut fields = protocol::parse_fields(&message.body);
    let code = field(&fields, b'C').unwrap_or_default();
    let fix = match code.as_str() {
        // The token was accepted; the role itself may not log in.
        "28000" => Some(
            "the role was authenticated but may not log in: an administrator must grant it LOGIN \
             (ALTER ROLE … LOGIN), or connect as another role",
        ),
        other => fix_for_sqlstate(other),
    };
    if let Some(fix) = fix
        && field(&fields, b'H').is_none()
    {
        set_field(&mut fields, b'H', format!("pgwi: {fix}"));
    }
    diagnosed(&fields, &code)
}

fn diagnosed(fields: &[(u8, String)], code: &str) -> Diagnosed {
    let summary = format!(
        "{} (SQLSTATE {code})",
        field(fields, b'M').unwrap_or_default()
    );
    let borrowed: Vec<(u8, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Diagnosed {
        packet: protocol::error_response(&borrowed),
        summary,
    }
}

pub(super) struct Diagnosed {
    pub(super) packet: Vec<u8>,
    pub(super) summary: String,
}
