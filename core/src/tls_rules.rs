//! The TLS rules of every connection pgwi opens to the server — the pool's (sqlx) and the proxy's
//! (tokio-rustls) — from `database.sslmode` and `database.ssl_root_cert`.
//!
//! libpq's meaning of each mode, never weaker for a token: an Entra token is a bearer credential that every
//! Azure PostgreSQL server where the identity has a role accepts, so whoever can pose as the server can use it.
//!
//! - `verify-full`: the chain must lead to Mozilla's roots or a CA of `database.ssl_root_cert`, and the
//!   certificate must name the host.
//! - `verify-ca` with `database.ssl_root_cert`: the chain must lead to a CA of that file alone; the name is
//!   not checked (libpq's verify-ca with a private CA).
//! - `verify-ca` without a CA file would mean "any public CA, any name": any certificate anyone can buy
//!   would pass. libpq refuses that pairing (`sslrootcert=system` needs `verify-full`); pgwi raises it to
//!   `verify-full` and says so once.
//! - `require` and `prefer`: encrypted, the server not verified.
//!
//! Sending a token or password to a host that is not local over a connection whose server is not verified
//! (`disable`, `prefer`, `require`, `verify-ca`) gets one warning at start naming the risk and the fix.

use std::path::PathBuf;

use crate::config::{DatabaseConfig, SslMode, is_local_host};

/// What a connection checks of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// No TLS: `disable`, or a Unix socket (the kernel carries the bytes; PostgreSQL offers no TLS there).
    Plaintext,
    /// TLS without a certificate check: `require`, and `prefer` (which goes on in plaintext when the server
    /// offers no TLS).
    Unverified,
    /// The chain must lead to a CA of this file alone; the host name is not checked.
    ChainToFile(PathBuf),
    /// The chain must lead to Mozilla's roots or a CA of this file, and the certificate must name the host.
    Full(Option<PathBuf>),
}

/// Why the mode in force is stricter than the one configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Raised {
    /// `verify-ca` without `database.ssl_root_cert`: the public roots, which any name can get a certificate
    /// from, so only the name makes the check mean anything.
    PublicRoots,
    /// `verify-ca` with `database.ssl_root_cert` in the library's pool: sqlx trusts Mozilla's roots besides
    /// the file and has no way to leave them out, so a chain-only check would pass any public certificate.
    SqlxAddsPublicRoots,
}

/// A secret-free account of a credential sent to a non-local server that is not verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// What is wrong and what it risks.
    pub problem: String,
    /// What to change.
    pub fix: String,
}

impl std::fmt::Display for Exposure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "database.sslmode {}; fix: {}", self.problem, self.fix)
    }
}

/// The TLS rules for connections to one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRules {
    /// The mode configured (`database.sslmode`).
    pub sslmode: SslMode,
    /// The server's host name, address or socket directory.
    pub host: String,
    /// What is checked.
    pub verification: Verification,
    /// Set when `verification` is stricter than `sslmode` says.
    pub raised: Option<Raised>,
}

impl TlsRules {
    /// libpq's rules for `db` against `host` (the proxy's: tokio-rustls can express all of them).
    pub fn new(db: &DatabaseConfig, host: &str) -> Self {
        let (verification, raised) = match (db.sslmode, &db.ssl_root_cert) {
            _ if host.starts_with('/') => (Verification::Plaintext, None),
            (SslMode::Disable, _) => (Verification::Plaintext, None),
            (SslMode::Prefer | SslMode::Require, _) => (Verification::Unverified, None),
            (SslMode::VerifyCa, Some(file)) => (Verification::ChainToFile(file.clone()), None),
            (SslMode::VerifyCa, None) => (Verification::Full(None), Some(Raised::PublicRoots)),
            (SslMode::VerifyFull, file) => (Verification::Full(file.clone()), None),
        };
        Self {
            sslmode: db.sslmode,
            host: host.to_owned(),
            verification,
            raised,
        }
    }

    /// The same rules as sqlx can apply them for the library's pool: a chain checked against the CA file
    /// alone cannot be asked of sqlx (it adds Mozilla's roots), so that one becomes `verify-full` with the
    /// file — stricter, never weaker.
    pub fn for_sqlx(self) -> Self {
        match self.verification {
            Verification::ChainToFile(file) => Self {
                verification: Verification::Full(Some(file)),
                raised: Some(Raised::SqlxAddsPublicRoots),
                ..self
            },
            _ => self,
        }
    }

    /// The mode in force: `verify-full` where it was raised.
    pub fn effective_sslmode(&self) -> SslMode {
        match self.raised {
            Some(_) => SslMode::VerifyFull,
            None => self.sslmode,
        }
    }

    /// Whether the host is this machine (loopback, `localhost`, a Unix socket): nothing crosses a network.
    pub fn is_local(&self) -> bool {
        is_local_host(&self.host)
    }

    /// The risk of sending a token or password under these rules: `None` for a local host or a verified
    /// server.
    pub fn exposure(&self) -> Option<Exposure> {
        if self.is_local() {
            return None;
        }
        let host = &self.host;
        let taken = "anyone on the network path can pose as the server and take the token (or password), \
                     which Entra-authenticated Azure PostgreSQL servers accept wherever the identity has a \
                     role";
        let problem = match &self.verification {
            Verification::Full(_) => return None,
            Verification::Plaintext => format!(
                "is {} against {host}: the token (or password) crosses the network unencrypted; {taken}",
                self.sslmode
            ),
            Verification::Unverified if self.sslmode == SslMode::Prefer => format!(
                "is prefer against {host}: TLS is not required and the server's certificate is not \
                 verified; {taken}"
            ),
            Verification::Unverified => format!(
                "is {} against {host}: TLS without verifying the server's certificate; {taken}",
                self.sslmode
            ),
            Verification::ChainToFile(file) => format!(
                "is verify-ca against {host}: the certificate must come from a CA of \
                 database.ssl_root_cert ({}) but need not name {host}; anyone on the network path with \
                 any certificate from that CA can pose as the server and take the token (or password)",
                file.display()
            ),
        };
        Some(Exposure {
            problem,
            fix: "set database.sslmode = verify-full, which Azure Database for PostgreSQL's certificates \
                  pass (for a server with a private CA, database.ssl_root_cert names that CA)"
                .into(),
        })
    }

    /// What a raised mode means, for the log: `None` when the mode is the one configured.
    pub fn raise_notice(&self) -> Option<String> {
        Some(match self.raised? {
            Raised::PublicRoots => format!(
                "database.sslmode = verify-ca without database.ssl_root_cert is used as verify-full against \
                 {}: with the public roots, a certificate chain alone proves nothing (anyone can get one for \
                 their own name), so the name is checked too, as libpq requires for sslrootcert=system; set \
                 database.sslmode = verify-full to say so, or database.ssl_root_cert to check the chain \
                 against a private CA alone",
                self.host
            ),
            Raised::SqlxAddsPublicRoots => format!(
                "database.sslmode = verify-ca with database.ssl_root_cert is used as verify-full by the \
                 library's pool against {}: sqlx trusts the public roots besides that file, so a chain-only \
                 check would pass any public certificate for any name; the certificate must name the host \
                 (pgwi proxy checks the chain against the file alone); set database.sslmode = verify-full \
                 to say so",
                self.host
            ),
        })
    }

    /// Logs, once per call (the pool's and the proxy's start each call it once), the raise and the exposure.
    pub(crate) fn announce(&self) {
        if let Some(notice) = self.raise_notice() {
            tracing::warn!(sslmode = %self.sslmode, host = %self.host, "{notice}");
        }
        if let Some(exposure) = self.exposure() {
            tracing::warn!(sslmode = %self.sslmode, host = %self.host, "{exposure}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sslmode: SslMode, ca: Option<&str>, host: &str) -> TlsRules {
        let db = DatabaseConfig {
            sslmode,
            ssl_root_cert: ca.map(PathBuf::from),
            ..DatabaseConfig::default()
        };
        TlsRules::new(&db, host)
    }

    #[test]
    fn each_sslmode_maps_to_what_is_checked() {
        // Proves the rule table: verify-ca without a CA file is verify-full (raised), with one it checks the
        // chain against the file alone (the proxy) or is verify-full (sqlx's pool); a socket is plaintext.
        let host = "db.example.com";
        assert_eq!(
            rules(SslMode::VerifyCa, None, host).verification,
            Verification::Full(None)
        );
        assert_eq!(
            rules(SslMode::VerifyCa, None, host).effective_sslmode(),
            SslMode::VerifyFull
        );
        let chain = rules(SslMode::VerifyCa, Some("/ca.pem"), host);
        assert_eq!(
            chain.verification,
            Verification::ChainToFile("/ca.pem".into())
        );
        assert_eq!(chain.raised, None);
        let pool = chain.for_sqlx();
        assert_eq!(
            pool.verification,
            Verification::Full(Some("/ca.pem".into()))
        );
        assert_eq!(pool.raised, Some(Raised::SqlxAddsPublicRoots));
        assert_eq!(
            rules(SslMode::Require, None, host).verification,
            Verification::Unverified
        );
        assert_eq!(
            rules(SslMode::VerifyFull, None, "/run/postgresql").verification,
            Verification::Plaintext
        );
    }

    #[test]
    fn only_an_unverified_server_that_is_not_local_is_an_exposure() {
        // Proves: require, prefer, disable and verify-ca with a CA file to a remote host are exposures that
        // name database.sslmode and verify-full; verify-full, raised verify-ca and local hosts are not.
        let remote = "db.example.com";
        for (mode, ca) in [
            (SslMode::Require, None),
            (SslMode::Prefer, None),
            (SslMode::Disable, None),
            (SslMode::VerifyCa, Some("/ca.pem")),
        ] {
            let exposure = rules(mode, ca, remote)
                .exposure()
                .unwrap_or_else(|| panic!("{mode} is not an exposure"));
            let text = exposure.to_string();
            assert!(
                text.starts_with("database.sslmode") && text.contains("verify-full"),
                "{text}"
            );
            assert!(text.contains("take the token"), "{text}");
        }
        for (mode, ca, host) in [
            (SslMode::VerifyFull, None, remote),
            (SslMode::VerifyCa, None, remote),
            (SslMode::Require, None, "127.0.0.1"),
            (SslMode::Require, None, "localhost"),
            (SslMode::Require, None, "::1"),
            (SslMode::Require, None, "/run/postgresql"),
        ] {
            assert_eq!(rules(mode, ca, host).exposure(), None, "{mode} {host}");
        }
        assert_eq!(
            rules(SslMode::VerifyCa, Some("/ca.pem"), remote)
                .for_sqlx()
                .exposure(),
            None,
            "the pool's raised verify-ca verifies the server"
        );
    }
}
