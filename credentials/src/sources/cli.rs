//! What `az-cli` and `azure-developer-cli` share: running the tool through the SDK with a deadline, in a
//! process group of its own that is killed as a whole when the deadline passes; finding it on `PATH`; and
//! turning its failures (not installed, not logged in, timed out) into fixes.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use std::sync::Arc;

use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use azure_identity::Executor;

use crate::{CredentialError, Environment, ErrorKind, SourceContext, Token};

/// A developer tool that prints tokens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CliTool {
    /// The source's kind.
    pub kind: &'static str,
    /// The executable's name.
    pub program: &'static str,
    /// What users call it.
    pub name: &'static str,
    /// Where to get it.
    pub install_url: &'static str,
    /// The command that logs in.
    pub login: &'static str,
    /// Its flag for a tenant.
    pub tenant_flag: &'static str,
    /// The command the SDK runs, without its scope.
    pub token_command: &'static str,
    /// The configuration key of the deadline.
    pub timeout_key: &'static str,
    /// The oldest version whose output the SDK reads.
    pub minimum_version: &'static str,
}

/// Runs the tool with a deadline, in its own process group so the shell and the tool die together.
#[derive(Debug)]
struct DeadlineExecutor {
    tool: CliTool,
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
        // Its own process group, so that the shell, the tool and the tool's own children end together.
        #[cfg(unix)]
        command.process_group(0);
        if self.env.is_fixed()
            && let Some(path) = self.env.get("PATH")
        {
            command.env("PATH", path);
        }
        let child = command.spawn()?;
        // Kills the group however this call ends: at the deadline below, or when the caller stops waiting
        // (auto's chain deadline, the cache's fetch deadline). kill_on_drop alone would end only the shell.
        let mut group = GroupKiller(child.id());
        match tokio::time::timeout(self.timeout, child.wait_with_output()).await {
            Ok(output) => {
                // The shell has exited and been reaped: its id may be reused, so it must not be killed.
                group.0 = None;
                output
            }
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "{} did not answer within {}s and was killed",
                    self.tool.program,
                    self.timeout.as_secs()
                ),
            )),
        }
    }
}

/// Kills the process group led by this process id when dropped (the shell the SDK runs, `az`, and `az`'s
/// own children), unless the id was taken out because the shell was reaped.
struct GroupKiller(Option<u32>);

impl Drop for GroupKiller {
    fn drop(&mut self) {
        #[cfg(unix)]
        if let Some(group) = self
            .0
            .take()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(rustix::process::Pid::from_raw)
        {
            // The shell is not reaped yet (tokio reaps it after kill_on_drop), so its id still names this
            // group. An error means the group is already gone.
            let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        }
    }
}

/// What `az-cli` and `azure-developer-cli` are: an SDK credential that runs the tool, with its deadline.
pub(crate) struct CliSource {
    pub tool: CliTool,
    pub credential: Arc<dyn TokenCredential>,
    pub scope: String,
    pub tenant_id: Option<String>,
    pub timeout: Duration,
}

impl std::fmt::Debug for CliSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CliSource")
            .field("tool", &self.tool.program)
            .field("tenant_id", &self.tenant_id)
            .field("timeout", &self.timeout)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl CliSource {
    /// Builds the executor with the deadline from `timeout_secs` (see [`crate::CredentialConfig::cli_timeout`])
    /// and hands it to `make`, the SDK credential's constructor (whose refusal names `keys`).
    pub(crate) fn new(
        tool: CliTool,
        config: &crate::CredentialConfig,
        ctx: &SourceContext,
        timeout_secs: Option<u64>,
        tenant_id: Option<&String>,
        keys: &'static str,
        make: impl FnOnce(Arc<dyn Executor>) -> azure_core::Result<Arc<dyn TokenCredential>>,
    ) -> Result<Self, CredentialError> {
        let timeout = check_timeout(tool, config, timeout_secs)?;
        let credential = make(Arc::new(DeadlineExecutor {
            tool,
            timeout,
            env: ctx.env.clone(),
        }))
        .map_err(|e| {
            CredentialError::configuration(
                tool.kind,
                format!("the Azure SDK rejected the settings: {e}"),
                format!("check {keys} (letters, digits, '.', '-', '_' and spaces only)"),
            )
        })?;
        Ok(Self {
            tool,
            credential,
            scope: config.scope.clone(),
            tenant_id: tenant_id.cloned(),
            timeout,
        })
    }

    /// A token from the tool, its failure explained.
    pub(crate) async fn token(&self) -> Result<Token, CredentialError> {
        super::common::sdk_token(self.credential.as_ref(), self.tool.kind, &self.scope)
            .await
            .map_err(|e| {
                explain(
                    self.tool,
                    &e,
                    self.timeout,
                    &self.scope,
                    self.tenant_id.as_deref(),
                )
            })
    }

    /// The kind, and the tenant when one is set.
    pub(crate) fn info(&self) -> crate::SourceInfo {
        let info = crate::SourceInfo::new(self.tool.kind);
        match &self.tenant_id {
            Some(tenant) => info.with("tenant_id", tenant),
            None => info,
        }
    }
}

/// The tool's deadline; refuses a zero one, and one that the whole request's deadline would cut short.
pub(crate) fn check_timeout(
    tool: CliTool,
    config: &crate::CredentialConfig,
    timeout_secs: Option<u64>,
) -> Result<Duration, CredentialError> {
    if let Some(wrong) = config.cli_timeout_problem(tool.timeout_key, timeout_secs) {
        return Err(CredentialError::configuration(
            tool.kind,
            format!("{} {}", wrong.key, wrong.problem),
            wrong.fix,
        ));
    }
    Ok(config.cli_timeout(timeout_secs))
}

/// Where the tool is on the `PATH` the source will use, if anywhere.
pub(crate) fn locate(tool: CliTool, ctx: &SourceContext) -> Option<PathBuf> {
    let path = ctx.env.get("PATH").or_else(|| std::env::var("PATH").ok())?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool.program))
        .find(|program| program.is_file())
}

/// The error for a tool that is not installed or not on `PATH`, with the fix.
pub(crate) fn missing(tool: CliTool) -> CredentialError {
    CredentialError::new(
        ErrorKind::AzCliMissing,
        tool.kind,
        format!(
            "{} (`{}`) is not installed or not on PATH",
            tool.name, tool.program
        ),
        format!(
            "install {} ({}) and run `{}`, or choose another credential.kind (workload-identity in AKS, \
             managed-identity on Azure compute, static-password locally)",
            tool.name, tool.install_url, tool.login
        ),
    )
}

/// The SDK's error from running the tool, as an error with the fix.
pub(crate) fn explain(
    tool: CliTool,
    error: &azure_core::Error,
    timeout: Duration,
    scope: &str,
    tenant_id: Option<&str>,
) -> CredentialError {
    let message = error.to_string();
    let mut timed_out = message.contains("did not answer within");
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = current {
        timed_out |= e
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
        current = e.source();
    }
    let by_hand = format!("{} --scope {scope}", tool.token_command);
    if timed_out {
        CredentialError::new(
            ErrorKind::AzCliTimeout,
            tool.kind,
            format!(
                "`{}` did not answer within {}s and was killed",
                tool.token_command,
                timeout.as_secs()
            ),
            format!(
                "run `{by_hand}` by hand to see what it waits for (login prompt, proxy, network); raise {} \
                 if it is merely slow",
                tool.timeout_key
            ),
        )
    } else if message.contains("not found on PATH") || message.contains("wasn't found on PATH") {
        missing(tool)
    } else if message.contains(tool.login) || message.contains("not logged in") {
        CredentialError::new(
            ErrorKind::AzCliNotLoggedIn,
            tool.kind,
            format!("{} is not logged in", tool.name),
            match tenant_id {
                Some(tenant) => format!("run `{} {} {tenant}`", tool.login, tool.tenant_flag),
                None => format!(
                    "run `{}` (add {} <tenant id> for another directory)",
                    tool.login, tool.tenant_flag
                ),
            },
        )
    } else {
        CredentialError::new(
            ErrorKind::Upstream,
            tool.kind,
            format!("`{}` failed: {}", tool.token_command, message.trim()),
            format!(
                "run `{by_hand}` by hand; {} {} or newer is needed",
                tool.name, tool.minimum_version
            ),
        )
    }
}
