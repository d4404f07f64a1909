//! Why connecting failed, in words a person can act on: one line per cause, with the fix, never the
//! password. Server errors are classified by SQLSTATE rather than passed on as sqlx's chain.

use pgwi_credentials::{CredentialError, Token};
use sea_orm::sqlx;

use crate::config::{ConfigError, SslMode};

/// Why connecting failed. Each variant's message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No password could be had from the token source (also: the last token expired and no new one came).
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// The server refused the user and password (SQLSTATE 28P01 or 28000).
    #[error(transparent)]
    Authentication(Box<AuthenticationFailure>),
    /// TLS failed: handshake or certificate verification.
    #[error(
        "TLS to {host}:{port} failed ({detail}); with sslmode={sslmode} the server certificate must chain to \
         a trusted CA{}: check database.ssl_root_cert and that database.host is the name on the certificate",
        if *.sslmode == SslMode::VerifyFull { " and name the host" } else { "" }
    )]
    Tls {
        /// Server host.
        host: String,
        /// Server port.
        port: u16,
        /// sslmode in force.
        sslmode: SslMode,
        /// What the TLS stack said.
        detail: String,
    },
    /// The server could not be reached within the connect timeout.
    #[error(
        "could not reach PostgreSQL at {host}:{port} {} ({last}); check database.host and database.port, \
         DNS, firewall rules or private endpoint, and that the server is running",
        how_long(*.waited_secs)
    )]
    Unreachable {
        /// Server host.
        host: String,
        /// Server port.
        port: u16,
        /// How long we tried.
        waited_secs: u64,
        /// The last error.
        last: String,
    },
    /// The user could not be derived from the token (`user = "auto"`).
    #[error(
        "database.user = \"auto\" needs a token whose claims name the identity (xms_mirid, upn, \
         preferred_username or unique_name), but the {source_kind} token has none; set database.user to \
         the managed identity's name"
    )]
    UserNotDerivable {
        /// The token source's kind.
        source_kind: String,
    },
    /// The server answered with an error whose SQLSTATE says what to do.
    #[error("{message} (SQLSTATE {code}); {fix}")]
    Server {
        /// SQLSTATE.
        code: String,
        /// The server's message, alone.
        message: String,
        /// What to do about it.
        fix: String,
    },
    /// Any other database error.
    #[error("PostgreSQL error: {0}")]
    Database(sqlx::Error),
}

impl ConnectError {
    /// True when the fix is in configuration (exit status 2 in the `pgwi` binary).
    pub fn is_configuration(&self) -> bool {
        match self {
            ConnectError::Config(_) | ConnectError::UserNotDerivable { .. } => true,
            ConnectError::Credential(e) => e.is_configuration(),
            ConnectError::Server { code, .. } => code == "3D000",
            _ => false,
        }
    }

    /// A database error, classified by SQLSTATE when the server gave one that a person can act on.
    pub fn from_sqlx(error: sqlx::Error) -> Self {
        let Some(db) = error.as_database_error() else {
            return Self::Database(error);
        };
        let server = Self::for_sqlstate(&db.code().unwrap_or_default(), db.message());
        server.unwrap_or(Self::Database(error))
    }

    /// What to do about a server error once the server has accepted the password: 28000 then means the
    /// role may not log in; other SQLSTATEs as [`fix_for_sqlstate`].
    pub(crate) fn fix_after_login(code: &str) -> Option<&'static str> {
        match code {
            "28000" => Some(
                "the role was authenticated but may not log in: an administrator must grant it LOGIN \
                 (ALTER ROLE … LOGIN), or connect as another role",
            ),
            other => fix_for_sqlstate(other),
        }
    }

    /// The server's error as [`ConnectError::Server`], with its fix, when the SQLSTATE says what to do
    /// ([`fix_for_sqlstate`]).
    pub fn for_sqlstate(code: &str, message: &str) -> Option<Self> {
        fix_for_sqlstate(code).map(|fix| Self::Server {
            code: code.to_owned(),
            message: message.to_owned(),
            fix: fix.to_owned(),
        })
    }
}

impl From<sqlx::Error> for ConnectError {
    fn from(error: sqlx::Error) -> Self {
        Self::from_sqlx(error)
    }
}

/// How long the attempts took, for [`ConnectError::Unreachable`]: "within 0s" would read as a timeout too
/// short to try, when the refusal came at once.
fn how_long(waited_secs: u64) -> String {
    match waited_secs {
        0 => "at once".into(),
        secs => format!("within {secs}s"),
    }
}

/// What to do about a server error, for the SQLSTATEs where the cause is clear.
pub fn fix_for_sqlstate(code: &str) -> Option<&'static str> {
    Some(match code {
        "3D000" => "create the database, owned by the application's role, or correct database.name",
        "42501" => {
            "grant the role the privilege it lacks (an application usually needs CONNECT, CREATE and \
             TEMPORARY on the database and CREATE on schema public), or connect as a role that has it"
        }
        "57P01" | "57P02" | "57P03" => {
            "the server is shutting down or restarting (maintenance or failover); run again once it is back"
        }
        "53300" => {
            "the server has no free connection slots; lower database.max_connections or raise the \
             server's max_connections"
        }
        "3F000" => "the schema does not exist; create it or correct the search path",
        "25006" => "the server is read-only (a replica, or storage full); connect to the primary",
        "53100" => "the server is out of disk space; free space or scale the storage",
        _ => return None,
    })
}

/// The server refused the login: who, where, and the server's words (never the password).
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL at {host}:{port} refused user {user:?} on database {database:?} ({code}: {message}). \
     Likely causes: the user must be the managed identity's NAME (not its client id; `user = \"auto\"` \
     derives it from the token); the role must exist on the server (created with \
     pgaadauth_create_principal_with_oid); the token's audience must be \
     Azure Database for PostgreSQL ({audience}); for a static password, the password must be right"
)]
pub struct AuthenticationFailure {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// The user presented.
    pub user: String,
    /// The database asked for.
    pub database: String,
    /// SQLSTATE.
    pub code: String,
    /// The server's message.
    pub message: String,
    /// The token's `aud` claim, or a note that there was none.
    pub audience: String,
}

impl AuthenticationFailure {
    /// The refusal of `user` on `database` at `host:port` (the server's `code` and `message`), with the
    /// audience of the `token` presented.
    pub(crate) fn new(
        host: &str,
        port: u16,
        user: &str,
        database: &str,
        code: &str,
        message: &str,
        token: &Token,
    ) -> Self {
        Self {
            host: host.to_owned(),
            port,
            user: user.to_owned(),
            database: database.to_owned(),
            code: code.to_owned(),
            message: message.to_owned(),
            audience: super::audience(token),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ConnectError;

    fn unreachable(waited_secs: u64) -> String {
        ConnectError::Unreachable {
            host: "db.example".into(),
            port: 5432,
            waited_secs,
            last: "Connection refused (os error 111)".into(),
        }
        .to_string()
    }

    #[test]
    fn an_immediate_refusal_says_at_once_not_within_zero_seconds() {
        let message = unreachable(0);
        assert!(
            message.starts_with(
                "could not reach PostgreSQL at db.example:5432 at once (Connection refused (os error 111)); \
                 check database.host"
            ),
            "{message}"
        );
        assert!(!message.contains("within 0s"), "{message}");
    }

    #[test]
    fn a_refusal_after_retries_says_how_long_they_took() {
        let message = unreachable(30);
        assert!(
            message.starts_with(
                "could not reach PostgreSQL at db.example:5432 within 30s (Connection refused (os error 111))"
            ),
            "{message}"
        );
    }
}
