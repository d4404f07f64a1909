//! A fake `az` executable for tests: put its folder first on `PATH` and tell it how to behave.
//!
//! It answers `az account get-access-token -o json ...` the way Azure CLI 2.54+ does, or fails like an
//! unlogged CLI, or hangs, and records each invocation's arguments.

use std::path::{Path, PathBuf};

use crate::TestSupportError;

const SCRIPT: &str = r#"#!/bin/sh
# Fake az for pgwi's tests: behaviour comes from files next to this script.
here="$(dirname "$0")"
echo "$*" >> "$here/calls"
case "$(cat "$here/mode")" in
  token) cat "$here/stdout"; exit 0 ;;
  not-logged-in) echo "ERROR: Please run 'az login' to setup account." >&2; exit 1 ;;
  hang) sleep 600; exit 0 ;;
  fail) cat "$here/stderr" >&2; exit 1 ;;
esac
echo "fake az: unknown mode" >&2
exit 2
"#;

/// How the fake answers. `Debug` does not show the access token.
#[derive(Clone)]
pub enum AzBehaviour {
    /// Print a token response with this access token, expiring at this Unix time.
    Token {
        /// The access token to print.
        access_token: String,
        /// `expires_on`, seconds since the epoch.
        expires_on: i64,
    },
    /// Fail as `az` does before `az login`.
    NotLoggedIn,
    /// Never answer.
    Hang,
    /// Fail with this message on stderr.
    Fail(String),
}

impl std::fmt::Debug for AzBehaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AzBehaviour::Token { expires_on, .. } => f
                .debug_struct("Token")
                .field("access_token", &"<redacted>")
                .field("expires_on", expires_on)
                .finish(),
            AzBehaviour::NotLoggedIn => f.write_str("NotLoggedIn"),
            AzBehaviour::Hang => f.write_str("Hang"),
            AzBehaviour::Fail(message) => f.debug_tuple("Fail").field(message).finish(),
        }
    }
}

/// The installed fake; its folder is removed on drop.
#[derive(Debug)]
pub struct FakeAz {
    dir: tempfile::TempDir,
}

impl FakeAz {
    /// Writes the fake into a fresh folder, answering with `behaviour`.
    pub fn install(behaviour: AzBehaviour) -> Result<Self, TestSupportError> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("pgwi-fake-az-")
            .tempdir()
            .map_err(TestSupportError::io("creating the fake az folder"))?;
        let script = dir.path().join("az");
        std::fs::write(&script, SCRIPT)
            .and_then(|()| {
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            })
            .map_err(TestSupportError::io("writing the fake az"))?;
        let fake = Self { dir };
        fake.set(behaviour)?;
        Ok(fake)
    }

    /// Changes how the next invocations answer.
    pub fn set(&self, behaviour: AzBehaviour) -> Result<(), TestSupportError> {
        let write = |name: &str, contents: &str| {
            let path = self.dir.path().join(name);
            std::fs::write(&path, contents)
                .map_err(TestSupportError::io(format!("writing {}", path.display())))
        };
        match behaviour {
            AzBehaviour::Token {
                access_token,
                expires_on,
            } => {
                crate::secrets::register(&access_token);
                let body = serde_json::json!({
                    "accessToken": access_token,
                    "expiresOn": "2026-11-28 12:00:00.000000",
                    "expires_on": expires_on,
                    "subscription": "00000000-0000-0000-0000-000000000000",
                    "tenant": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                    "tokenType": "Bearer"
                });
                write("stdout", &body.to_string())?;
                write("mode", "token")
            }
            AzBehaviour::NotLoggedIn => write("mode", "not-logged-in"),
            AzBehaviour::Hang => write("mode", "hang"),
            AzBehaviour::Fail(message) => {
                write("stderr", &message)?;
                write("mode", "fail")
            }
        }
    }

    /// The folder holding `az`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `PATH` with the fake first and the system's basic folders after it.
    pub fn path_env(&self) -> String {
        format!("{}:/usr/local/bin:/usr/bin:/bin", self.dir.path().display())
    }

    /// The arguments of each invocation so far.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    }

    /// A `PATH` with no `az` at all, for "not installed" tests.
    pub fn path_without_az() -> PathBuf {
        PathBuf::from("/nonexistent-pgwi-bin:/usr/bin:/bin")
    }
}
