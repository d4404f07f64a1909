//! A fake `az` (or `azd`) executable for tests: put its folder first on `PATH` and tell it how to behave.
//!
//! As `az` it answers `az account get-access-token -o json ...` the way Azure CLI 2.54+ does; as `azd`
//! ([`FakeAz::install_tool`] with [`FakeTool::Azd`]) it answers `azd auth token -o json ...` the way the
//! Azure Developer CLI does. Either can fail like an unlogged CLI, or hang, and records each invocation's
//! arguments.

use std::path::{Path, PathBuf};

use crate::TestSupportError;

const SCRIPT: &str = r#"#!/bin/sh
# Fake az for pgwi's tests: behaviour comes from files next to this script.
here="$(dirname "$0")"
echo "$*" >> "$here/calls"
case "$(cat "$here/mode")" in
  token) cat "$here/stdout"; exit 0 ;;
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

/// Which tool the fake is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FakeTool {
    /// The Azure CLI, `az`.
    Az,
    /// The Azure Developer CLI, `azd`.
    Azd,
}

impl FakeTool {
    fn program(self) -> &'static str {
        match self {
            Self::Az => "az",
            Self::Azd => "azd",
        }
    }
}

/// The installed fake; its folder is removed on drop.
#[derive(Debug)]
pub struct FakeAz {
    dir: tempfile::TempDir,
    tool: FakeTool,
}

impl FakeAz {
    /// Writes a fake `az` into a fresh folder, answering with `behaviour`.
    pub fn install(behaviour: AzBehaviour) -> Result<Self, TestSupportError> {
        Self::install_tool(FakeTool::Az, behaviour)
    }

    /// Writes a fake `tool` into a fresh folder, answering with `behaviour`.
    pub fn install_tool(tool: FakeTool, behaviour: AzBehaviour) -> Result<Self, TestSupportError> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::Builder::new()
            .prefix("pgwi-fake-az-")
            .tempdir()
            .map_err(TestSupportError::io("creating the fake az folder"))?;
        let script = dir.path().join(tool.program());
        std::fs::write(&script, SCRIPT)
            .and_then(|()| {
                std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            })
            .map_err(TestSupportError::io("writing the fake az"))?;
        let fake = Self { dir, tool };
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
                let body = match self.tool {
                    FakeTool::Az => serde_json::json!({
                        "accessToken": access_token,
                        "expiresOn": "2026-11-28 12:00:00.000000",
                        "expires_on": expires_on,
                        "subscription": "00000000-0000-0000-0000-000000000000",
                        "tenant": "72f988bf-86f1-41af-91ab-2d7cd011db47",
                        "tokenType": "Bearer"
                    }),
                    FakeTool::Azd => {
                        let expires = time::OffsetDateTime::from_unix_timestamp(expires_on)
                            .ok()
                            .and_then(|t| {
                                t.format(&time::format_description::well_known::Rfc3339)
                                    .ok()
                            })
                            .unwrap_or_default();
                        serde_json::json!({"token": access_token, "expiresOn": expires})
                    }
                };
                write("stdout", &body.to_string())?;
                write("mode", "token")
            }
            AzBehaviour::NotLoggedIn => {
                let message = match self.tool {
                    FakeTool::Az => "ERROR: Please run 'az login' to setup account.".to_owned(),
                    FakeTool::Azd => serde_json::json!({
                        "type": "consoleMessage",
                        "timestamp": "2026-11-29T07:00:00Z",
                        "data": {"message": "\nERROR: fetching token: not logged in, run `azd auth login` to login\n"}
                    })
                    .to_string(),
                };
                write("stderr", &message)?;
                write("mode", "fail")
            }
            AzBehaviour::Hang => write("mode", "hang"),
            AzBehaviour::Fail(message) => {
                write("stderr", &message)?;
                write("mode", "fail")
            }
        }
    }

    /// The folder holding the fake.
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

    /// A `PATH` with neither `az` nor `azd`, for "not installed" tests.
    pub fn path_without_az() -> PathBuf {
        PathBuf::from("/nonexistent-pgwi-bin:/usr/bin:/bin")
    }
}
