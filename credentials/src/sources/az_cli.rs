//! `az-cli`: a developer's own identity, through `azure_identity::AzureCliCredential`.
//!
//! The SDK runs `az account get-access-token` with no timeout; we run it through an executor that kills the
//! whole process group when `timeout_secs` expires, and turn the usual failures into fixes.

use std::ffi::OsStr;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential as _;
use azure_identity::{AzureCliCredential, AzureCliCredentialOptions, Executor};

use crate::{
    CredentialConfig, CredentialError, Environment, ErrorKind, SourceContext, SourceInfo, Token,
    TokenSource,
};

/// The kind's name in configuration.
pub const KIND: &str = "az-cli";

/// Runs `az` with a deadline, in its own process group so the shell and `az` die together.
#[derive(Debug)]
struct DeadlineExecutor {
    timeout: Duration,
    env: Environment,
}

#[async_trait]
impl Executor for DeadlineExecutor {
    async fn run(&self, program: &OsStr, args: &[&OsStr]) -> std::io::Result<Output> {
        let mut command = tokio::process::Command::new(program);
        command
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        // Its own process group, so that the shell, az and az's Python can be ended together.
        #[cfg(unix)]
        command.process_group(0);
        if self.env.is_fixed()
            && let Some(path) = self.env.get("PATH")
        {
            command.env("PATH", path);
        }
        let child = command.spawn()?;
        let group = child.id();
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(output) => output,
            Err(_) => {
                // Dropping the wait killed the shell (kill_on_drop); its children are in its group.
                #[cfg(unix)]
                if let Some(group) = group
                    .and_then(|pid| i32::try_from(pid).ok())
                    .and_then(rustix::process::Pid::from_raw)
                {
                    let _ =
                        rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                }
                #[cfg(not(unix))]
                let _ = group;
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "az did not answer within {}s and was killed",
                        self.timeout.as_secs()
                    ),
                ))
            }
        }
    }
}

/// The error for an `az` that is not installed or not on `PATH`, with the fix.
pub fn az_missing() -> CredentialError {
    CredentialError::new(
        ErrorKind::AzCliMissing,
        KIND,
        "the Azure CLI (`az`) is not installed or not on PATH",
        "install the Azure CLI (https://learn.microsoft.com/cli/azure/install-azure-cli) and run `az login`, \
         or choose another credential.kind (workload-identity in AKS, static-password locally)",
    )
}

/// Where `az` is on the `PATH` the source will use, if anywhere: what `pgwi doctor` shows.
pub fn locate(ctx: &SourceContext) -> Option<std::path::PathBuf> {
    let path = ctx.env.get("PATH").or_else(|| std::env::var("PATH").ok())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("az"))
        .find(|az| az.is_file())
}

/// Tokens for whoever is logged in to the Azure CLI.
pub struct AzCliSource {
    credential: Arc<AzureCliCredential>,
    scope: String,
    tenant_id: Option<String>,
    subscription: Option<String>,
    timeout: Duration,
}

impl std::fmt::Debug for AzCliSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzCliSource")
            .field("tenant_id", &self.tenant_id)
            .field("subscription", &self.subscription)
            .field("timeout", &self.timeout)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl AzCliSource {
    /// Builds the source; `az` itself is first run when a token is asked for.
    pub fn new(config: &CredentialConfig, ctx: &SourceContext) -> Result<Self, CredentialError> {
        let az = &config.az_cli;
        if az.timeout_secs == 0 {
            return Err(CredentialError::configuration(
                KIND,
                "credential.az_cli.timeout_secs is 0",
                "set it to the seconds az may take, e.g. 30",
            ));
        }
        let timeout = Duration::from_secs(az.timeout_secs);
        let credential = AzureCliCredential::new(Some(AzureCliCredentialOptions {
            subscription: az.subscription.clone(),
            tenant_id: az.tenant_id.clone(),
            executor: Some(Arc::new(DeadlineExecutor {
                timeout,
                env: ctx.env.clone(),
            })),
        }))
        .map_err(|e| {
            CredentialError::configuration(
                KIND,
                format!("the Azure SDK rejected the settings: {e}"),
                "check credential.az_cli.tenant_id and credential.az_cli.subscription (letters, digits, '.', '-', '_' and spaces only)",
            )
        })?;
        Ok(Self {
            credential,
            scope: config.scope.clone(),
            tenant_id: az.tenant_id.clone(),
            subscription: az.subscription.clone(),
            timeout,
        })
    }

    fn explain(&self, error: &azure_core::Error) -> CredentialError {
        let message = error.to_string();
        let timed_out = {
            let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
            let mut found = false;
            while let Some(e) = current {
                if e.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
                {
                    found = true;
                }
                current = e.source();
            }
            found || message.contains("did not answer within")
        };
        if timed_out {
            CredentialError::new(
                ErrorKind::AzCliTimeout,
                KIND,
                format!(
                    "`az account get-access-token` did not answer within {}s and was killed",
                    self.timeout.as_secs()
                ),
                format!(
                    "run `az account get-access-token --scope {}` by hand to see what it waits for (login \
                     prompt, proxy, network); raise credential.az_cli.timeout_secs if it is merely slow",
                    self.scope
                ),
            )
        } else if message.contains("not found on PATH") || message.contains("wasn't found on PATH")
        {
            az_missing()
        } else if message.contains("az login") {
            CredentialError::new(
                ErrorKind::AzCliNotLoggedIn,
                KIND,
                "the Azure CLI is not logged in",
                match &self.tenant_id {
                    Some(tenant) => format!("run `az login --tenant {tenant}`"),
                    None => {
                        "run `az login` (add --tenant <tenant id> for another directory)".to_owned()
                    }
                },
            )
        } else {
            CredentialError::new(
                ErrorKind::Upstream,
                KIND,
                format!("`az account get-access-token` failed: {}", message.trim()),
                format!(
                    "run `az account get-access-token --scope {}` by hand; Azure CLI 2.54 or newer is needed",
                    self.scope
                ),
            )
        }
    }
}

#[async_trait]
impl TokenSource for AzCliSource {
    async fn token(&self) -> Result<Token, CredentialError> {
        match self
            .credential
            .get_token(&[self.scope.as_str()], None)
            .await
        {
            Ok(access) => Ok(Token::new(
                access.token.secret().to_owned(),
                Some(access.expires_on),
            )),
            Err(e) => Err(self.explain(&e)),
        }
    }

    fn info(&self) -> SourceInfo {
        let mut info = SourceInfo::new(KIND);
        if let Some(tenant) = &self.tenant_id {
            info = info.with("tenant_id", tenant);
        }
        if let Some(subscription) = &self.subscription {
            info = info.with("subscription", subscription);
        }
        info
    }
}
