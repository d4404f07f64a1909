//! Maps the configuration's `kind` to a constructor, plugin-style: the built-in sources are registered by
//! default and an application can add its own (say, a secret store) without forking.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::{
    CachedTokenSource, CredentialConfig, CredentialError, Environment, SourceInfo, TokenSource,
};

/// What a source's constructor gets besides configuration.
#[derive(Clone, Default)]
pub struct SourceContext {
    /// Where environment variables are read (default: the process environment).
    pub env: Environment,
    /// Options for the Azure SDK's HTTP pipeline (transport, retries). `None`: the SDK's defaults.
    #[cfg(feature = "azure-sdk")]
    pub azure_client_options: Option<azure_core::http::ClientOptions>,
}

impl fmt::Debug for SourceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceContext")
            .field("env", &self.env)
            .finish_non_exhaustive()
    }
}

/// Builds a source from configuration.
pub type SourceFactory = Arc<
    dyn Fn(&CredentialConfig, &SourceContext) -> Result<Arc<dyn TokenSource>, CredentialError>
        + Send
        + Sync,
>;

/// The kind that picks a source from what the environment offers.
pub const AUTO: &str = "auto";

/// The known kinds and their constructors.
#[derive(Clone)]
pub struct SourceRegistry {
    factories: BTreeMap<String, SourceFactory>,
}

impl fmt::Debug for SourceRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceRegistry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Default for SourceRegistry {
    /// The built-in sources this crate was compiled with.
    fn default() -> Self {
        let mut registry = Self::empty();
        #[cfg(feature = "workload-identity")]
        registry.register(crate::sources::workload_identity::KIND, |config, ctx| {
            Ok(Arc::new(
                crate::sources::workload_identity::WorkloadIdentitySource::new(config, ctx)?,
            ))
        });
        #[cfg(feature = "az-cli")]
        registry.register(crate::sources::az_cli::KIND, |config, ctx| {
            Ok(Arc::new(crate::sources::az_cli::AzCliSource::new(
                config, ctx,
            )?))
        });
        #[cfg(feature = "static-password")]
        registry.register(crate::sources::static_password::KIND, |config, ctx| {
            Ok(Arc::new(
                crate::sources::static_password::StaticPasswordSource::new(config, ctx)?,
            ))
        });
        #[cfg(feature = "managed-identity")]
        registry.register(crate::sources::managed_identity::KIND, |config, ctx| {
            Ok(Arc::new(
                crate::sources::managed_identity::ManagedIdentitySource::new(config, ctx)?,
            ))
        });
        #[cfg(feature = "client-secret")]
        registry.register(crate::sources::client_secret::KIND, |config, ctx| {
            Ok(Arc::new(
                crate::sources::client_secret::ClientSecretSource::new(config, ctx)?,
            ))
        });
        #[cfg(feature = "client-certificate")]
        registry.register(crate::sources::client_certificate::KIND, |config, ctx| {
            Ok(Arc::new(
                crate::sources::client_certificate::ClientCertificateSource::new(config, ctx)?,
            ))
        });
        #[cfg(feature = "github-actions")]
        registry.register(crate::sources::github_actions::KIND, |config, ctx| {
            Ok(Arc::new(
                crate::sources::github_actions::GithubActionsSource::new(config, ctx)?,
            ))
        });
        #[cfg(feature = "azure-developer-cli")]
        registry.register(crate::sources::azure_developer_cli::KIND, |config, ctx| {
            Ok(Arc::new(
                crate::sources::azure_developer_cli::AzureDeveloperCliSource::new(config, ctx)?,
            ))
        });
        registry
    }
}

impl SourceRegistry {
    /// A registry with no kinds at all.
    pub fn empty() -> Self {
        Self {
            factories: BTreeMap::new(),
        }
    }

    /// Registers (or replaces) the constructor for `kind`. Its own keys live in the `credential.<kind>` table
    /// (with `-` written as `_`), read with [`CredentialConfig::custom_section`].
    pub fn register(
        &mut self,
        kind: impl Into<String>,
        factory: impl Fn(
            &CredentialConfig,
            &SourceContext,
        ) -> Result<Arc<dyn TokenSource>, CredentialError>
        + Send
        + Sync
        + 'static,
    ) -> &mut Self {
        self.factories.insert(kind.into(), Arc::new(factory));
        self
    }

    /// Every kind `credential.kind` may name, `auto` included.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.factories.keys().cloned().collect();
        kinds.push(AUTO.to_owned());
        kinds.sort();
        kinds
    }

    /// Builds the source `config.kind` names.
    pub fn build(
        &self,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        self.check_sections(config)?;
        let kind = config.kind.trim();
        if kind == AUTO {
            return Ok(self.build_chain(config, ctx)?);
        }
        // A chain that names unknown kinds is wrong even while another kind is chosen.
        self.chain(config)?;
        let factory = self.factories.get(kind).ok_or_else(|| {
            CredentialError::configuration(
                "credential",
                format!("credential.kind = {kind:?} is not a known token source"),
                format!("use one of: {}", self.kinds().join(", ")),
            )
        })?;
        let source = factory(config, ctx)?;
        tracing::info!(source = %source, "token source ready");
        Ok(source)
    }

    /// Builds the source and puts a [`CachedTokenSource`] in front of it, refreshing
    /// `refresh_margin_secs` before expiry.
    pub fn build_cached(
        &self,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<CachedTokenSource>, CredentialError> {
        let source = self.build(config, ctx)?;
        Ok(Arc::new(CachedTokenSource::new(
            source,
            config.cache_options(),
        )))
    }

    /// `credential.kind = "auto"`: the chain of `credential.chain` (default [`crate::DEFAULT_CHAIN`]),
    /// resolved at the first token request, whose [`ChainSource::steps`] say what became of each source (what
    /// `pgwi doctor` shows). Fails at once when no source of the chain has its inputs.
    pub fn build_chain(
        &self,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<ChainSource>, CredentialError> {
        self.check_sections(config)?;
        let kinds = self.chain(config)?;
        let chain = ChainSource {
            registry: self.clone(),
            config: config.clone(),
            ctx: ctx.clone(),
            kinds,
            chosen: tokio::sync::Mutex::new(None),
            steps: std::sync::Mutex::new(Vec::new()),
        };
        let steps = chain.present_steps();
        if steps
            .iter()
            .all(|step| matches!(step.outcome, ChainOutcome::Skipped { .. }))
        {
            return Err(none_works(&steps));
        }
        chain.record(steps);
        Ok(Arc::new(chain))
    }

    /// The kinds `auto` tries, in order: `credential.chain`, or [`crate::DEFAULT_CHAIN`] without the kinds
    /// this build lacks. A kind in `credential.chain` that is not registered is a configuration error.
    pub fn chain(&self, config: &CredentialConfig) -> Result<Vec<String>, CredentialError> {
        match &config.chain {
            None => Ok(crate::DEFAULT_CHAIN
                .iter()
                .filter(|kind| self.factories.contains_key(**kind))
                .map(|kind| (*kind).to_owned())
                .collect()),
            Some(kinds) => {
                let known: Vec<String> = self.factories.keys().cloned().collect();
                for kind in kinds {
                    if !self.factories.contains_key(kind.trim()) {
                        return Err(CredentialError::configuration(
                            "credential",
                            format!(
                                "credential.chain names {kind:?}, which is not a token source of this build"
                            ),
                            format!(
                                "use kinds from: {} (a built-in kind is missing when pgwi was built without \
                                 its cargo feature)",
                                known.join(", ")
                            ),
                        ));
                    }
                }
                if kinds.is_empty() {
                    return Err(CredentialError::configuration(
                        "credential",
                        "credential.chain is empty",
                        format!(
                            "leave it unset for the default order ({}) or list kinds from: {}",
                            crate::DEFAULT_CHAIN.join(", "),
                            known.join(", ")
                        ),
                    ));
                }
                Ok(kinds.iter().map(|k| k.trim().to_owned()).collect())
            }
        }
    }

    fn check_sections(&self, config: &CredentialConfig) -> Result<(), CredentialError> {
        for key in config.custom.keys() {
            if !self.factories.contains_key(&key.replace('_', "-")) {
                return Err(CredentialError::configuration(
                    "credential",
                    format!("credential.{key} is not a known key"),
                    format!(
                        "known keys: kind, chain, scope, refresh_margin_secs, fetch_timeout_secs, expiry_skew_secs, and one table per kind ({})",
                        self.factories
                            .keys()
                            .map(|k| k.replace('-', "_"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// What became of one source of `auto`'s chain.
#[derive(Debug, Clone)]
pub enum ChainOutcome {
    /// Its inputs are there and it has not been asked yet (`why`: which inputs).
    Present {
        /// Which inputs make it worth trying.
        why: String,
    },
    /// It gave a token and is the one in use.
    Chosen {
        /// Which inputs made it available.
        why: String,
    },
    /// Its inputs are absent, or it said it cannot work here (no endpoint, not logged in): `auto` moved on.
    Skipped {
        /// Why, with the variable or key it lacks.
        reason: String,
    },
    /// It was meant to work and failed (Entra refused it, an input is broken): the chain stopped here,
    /// because this is the error to fix.
    Failed {
        /// Its error.
        error: CredentialError,
    },
    /// Not tried: a source before it was chosen or stopped the chain.
    NotTried,
    /// Being asked right now (recorded before each attempt, so that a request cut short by its deadline
    /// still shows which source it was waiting for).
    Trying {
        /// Which inputs made it worth trying.
        why: String,
    },
}

/// One source of `auto`'s chain and what became of it.
#[derive(Debug, Clone)]
pub struct ChainStep {
    /// The source's kind.
    pub kind: String,
    /// What became of it.
    pub outcome: ChainOutcome,
}

/// `credential.kind = "auto"`: tries the kinds of `credential.chain` in order, as the Azure SDKs'
/// `DefaultAzureCredential` does, and keeps the first that gives a token.
///
/// A source whose inputs are absent is skipped without being built. A source that reports it cannot
/// work here ([`CredentialError::is_unavailable`]: `az` not installed or not logged in, no managed identity
/// endpoint) is skipped too. Any other failure stops the chain with that source's error: it was meant to
/// work, and falling through to, say, a developer's `az` login would hide what to fix. Once a source gave a
/// token, it alone is asked from then on.
pub struct ChainSource {
    registry: SourceRegistry,
    config: CredentialConfig,
    ctx: SourceContext,
    kinds: Vec<String>,
    chosen: tokio::sync::Mutex<Option<(Arc<dyn TokenSource>, String)>>,
    steps: std::sync::Mutex<Vec<ChainStep>>,
}

impl fmt::Debug for ChainSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainSource")
            .field("kinds", &self.kinds)
            .field("steps", &self.steps())
            .finish_non_exhaustive()
    }
}

/// The one error when no source of the chain works: every source and its reason.
fn none_works(steps: &[ChainStep]) -> CredentialError {
    let reasons: Vec<String> = steps
        .iter()
        .map(|step| match &step.outcome {
            ChainOutcome::Skipped { reason } => format!("{}: {reason}", step.kind),
            ChainOutcome::Failed { error } => format!("{}: {}", step.kind, error.problem()),
            ChainOutcome::Present { why }
            | ChainOutcome::Chosen { why }
            | ChainOutcome::Trying { why } => format!("{}: {why}", step.kind),
            ChainOutcome::NotTried => format!("{}: not tried", step.kind),
        })
        .collect();
    CredentialError::configuration(
        AUTO,
        format!(
            "found no token source that works here ({})",
            reasons.join("; ")
        ),
        "give one source the input it lacks (above), or set credential.kind to the source you mean so that \
         pgwi says exactly what it needs; credential.chain sets which sources auto tries",
    )
}

impl ChainSource {
    /// The kinds tried, in order.
    pub fn kinds(&self) -> &[String] {
        &self.kinds
    }

    /// What became of each source at the last resolution (before the first token: whether its inputs are
    /// there).
    pub fn steps(&self) -> Vec<ChainStep> {
        self.steps.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn record(&self, steps: Vec<ChainStep>) {
        if let Ok(mut current) = self.steps.lock() {
            *current = steps;
        }
    }

    /// Each kind with whether its inputs are present, without building or asking anything.
    fn present_steps(&self) -> Vec<ChainStep> {
        present_steps(&self.kinds, &self.config, &self.ctx)
    }

    /// The kind being asked right now, while the chain resolves.
    fn trying(&self) -> Option<String> {
        self.steps()
            .into_iter()
            .find(|step| matches!(step.outcome, ChainOutcome::Trying { .. }))
            .map(|step| step.kind)
    }

    /// Builds `kind`'s source and asks it for a token, within what is left of the chain's deadline: a
    /// source that hangs fails here, by name, instead of the whole request failing as `auto`.
    async fn attempt(
        &self,
        kind: &str,
        factory: &SourceFactory,
        deadline: tokio::time::Instant,
    ) -> Result<(Arc<dyn TokenSource>, crate::Token), CredentialError> {
        let source = factory(&self.config, &self.ctx)?;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout_at(deadline, source.token()).await {
            Ok(token) => token.map(|token| (source, token)),
            // The source's request future is dropped here, which ends what it started (az's process
            // group, an HTTP request).
            Err(_) => Err(CredentialError::new(
                crate::ErrorKind::Timeout,
                kind.to_owned(),
                format!(
                    "no answer within the {:.1}s left of credential.fetch_timeout_secs ({}s), the deadline of \
                     auto's whole chain",
                    left.as_secs_f64(),
                    self.config.fetch_timeout_secs
                ),
                format!(
                    "find out what {kind} waits for (pgwi doctor; for az-cli or azure-developer-cli run the \
                     tool's token command by hand); raise credential.fetch_timeout_secs if it is merely slow, \
                     or leave {kind} out of credential.chain"
                ),
            )),
        }
    }

    /// Tries the sources in order; see the type's documentation. Each step is recorded before it is tried,
    /// and all of them share one deadline, just inside the cache's `fetch_timeout_secs`.
    async fn resolve(
        &self,
    ) -> Result<(Arc<dyn TokenSource>, String, crate::Token), CredentialError> {
        let deadline = tokio::time::Instant::now()
            + crate::cache::inner_deadline(std::time::Duration::from_secs(
                self.config.fetch_timeout_secs,
            ));
        let mut steps = self.present_steps();
        let mut result = None;
        for index in 0..steps.len() {
            let step = &mut steps[index];
            if result.is_some() {
                if matches!(step.outcome, ChainOutcome::Present { .. }) {
                    step.outcome = ChainOutcome::NotTried;
                }
                continue;
            }
            let ChainOutcome::Present { why } = &step.outcome else {
                continue;
            };
            let why = why.clone();
            let Some(factory) = self.registry.factories.get(&step.kind) else {
                continue;
            };
            let kind = step.kind.clone();
            step.outcome = ChainOutcome::Trying { why: why.clone() };
            self.record(steps.clone());
            let attempt = self.attempt(&kind, factory, deadline).await;
            let step = &mut steps[index];
            match attempt {
                Ok((source, token)) => {
                    step.outcome = ChainOutcome::Chosen { why: why.clone() };
                    result = Some(Ok((source, why, token)));
                }
                Err(error) if error.is_unavailable() => {
                    step.outcome = ChainOutcome::Skipped {
                        reason: error.problem().to_owned(),
                    };
                }
                Err(error) => {
                    step.outcome = ChainOutcome::Failed {
                        error: error.clone(),
                    };
                    result = Some(Err(error));
                }
            }
        }
        let outcome = match result {
            Some(Ok(chosen)) => Ok(chosen),
            Some(Err(error)) => {
                let before: Vec<String> = steps
                    .iter()
                    .take_while(|step| !matches!(step.outcome, ChainOutcome::Failed { .. }))
                    .map(|step| step.kind.clone())
                    .collect();
                let problem = if before.is_empty() {
                    format!(
                        "{} (credential.kind = auto tried it first)",
                        error.problem()
                    )
                } else {
                    format!(
                        "{} (credential.kind = auto skipped {} before it)",
                        error.problem(),
                        before.join(", ")
                    )
                };
                let stopped =
                    CredentialError::new(error.kind(), error.source_name(), problem, error.fix());
                Err(match error.code() {
                    Some(code) => stopped.with_code(code),
                    None => stopped,
                })
            }
            None => Err(none_works(&steps)),
        };
        self.record(steps);
        outcome
    }
}

#[async_trait::async_trait]
impl TokenSource for ChainSource {
    async fn token(&self) -> Result<crate::Token, CredentialError> {
        let mut chosen = self.chosen.lock().await;
        if let Some((source, _)) = chosen.as_ref() {
            let source = source.clone();
            drop(chosen);
            return source.token().await;
        }
        let (source, why, token) = self.resolve().await?;
        let skipped: Vec<String> = self
            .steps()
            .iter()
            .filter_map(|step| match &step.outcome {
                ChainOutcome::Skipped { reason } => Some(format!("{} ({reason})", step.kind)),
                _ => None,
            })
            .collect();
        tracing::info!(
            source = %source,
            reason = %why,
            skipped = %skipped.join("; "),
            "credential.kind = auto chose {}; name the kind explicitly in production",
            source.info().kind
        );
        *chosen = Some((source, why));
        Ok(token)
    }

    fn info(&self) -> SourceInfo {
        match self.chosen.try_lock().ok().and_then(|c| c.clone()) {
            Some((source, why)) => source.info().with("chosen_by", format!("auto: {why}")),
            None => {
                let info = SourceInfo::new(AUTO).with("chain", self.kinds.join(","));
                match self.trying() {
                    Some(kind) => info.with("trying", kind),
                    None => info,
                }
            }
        }
    }
}

/// Each of `kinds` with whether its inputs are present ([`ChainOutcome::Present`] or
/// [`ChainOutcome::Skipped`]), without building or asking anything.
pub fn present_steps(
    kinds: &[String],
    config: &CredentialConfig,
    ctx: &SourceContext,
) -> Vec<ChainStep> {
    kinds
        .iter()
        .map(|kind| ChainStep {
            kind: kind.clone(),
            outcome: match presence(kind, config, ctx) {
                Ok(why) => ChainOutcome::Present { why },
                Err(reason) => ChainOutcome::Skipped { reason },
            },
        })
        .collect()
}

/// Whether `kind`'s inputs are present in this configuration and environment: `Ok(which)` or
/// `Err(what is missing)`. Nothing is contacted.
pub fn presence(
    kind: &str,
    config: &CredentialConfig,
    ctx: &SourceContext,
) -> Result<String, String> {
    let _ = (config, ctx);
    match kind {
        #[cfg(feature = "static-password")]
        crate::sources::static_password::KIND => {
            let sp = &config.static_password;
            if sp.password_file.is_some() || sp.password.is_some() {
                Ok("a static password is configured".into())
            } else if ctx.env.get(&sp.password_env).is_some() {
                Ok(format!(
                    "the static password's variable {} is set",
                    sp.password_env
                ))
            } else {
                Err(format!(
                    "{} is not set and credential.static_password has no password_file",
                    sp.password_env
                ))
            }
        }
        #[cfg(feature = "client-secret")]
        crate::sources::client_secret::KIND => {
            match crate::sources::client_secret::secret_origin(config, ctx) {
                Some(origin) => Ok(format!(
                    "a service principal's client secret is in {origin}"
                )),
                None => Err(format!(
                    "{} is not set and credential.client_secret has no secret_file",
                    config.client_secret.secret_env
                )),
            }
        }
        #[cfg(feature = "client-certificate")]
        crate::sources::client_certificate::KIND => {
            match crate::sources::client_certificate::certificate_path(config, ctx) {
                Some((path, origin)) => Ok(format!(
                    "a service principal's certificate {} ({origin})",
                    path.display()
                )),
                None => Err(crate::sources::client_certificate::no_certificate()),
            }
        }
        #[cfg(feature = "workload-identity")]
        crate::sources::workload_identity::KIND => {
            if config.workload_identity.token_file.is_some() {
                Ok("credential.workload_identity.token_file is configured".into())
            } else if ctx.env.get("AZURE_FEDERATED_TOKEN_FILE").is_some() {
                Ok("AZURE_FEDERATED_TOKEN_FILE is set (AKS workload identity webhook)".into())
            } else {
                Err(
                    "AZURE_FEDERATED_TOKEN_FILE is not set (not an AKS pod with workload identity)"
                        .into(),
                )
            }
        }
        #[cfg(feature = "managed-identity")]
        crate::sources::managed_identity::KIND => {
            use crate::sources::managed_identity::{Endpoint, endpoint};
            // Nothing is contacted here: the IMDS probe comes when the source is asked for a token.
            match endpoint(config, ctx) {
                Endpoint::AppService(url) => Ok(format!(
                    "IDENTITY_ENDPOINT ({url}) and IDENTITY_HEADER are set (App Service, Container Apps, \
                     Functions)"
                )),
                Endpoint::Imds(url) => Ok(format!(
                    "a VM's managed identity through the instance metadata service at {url} (probed before the first \
                     request)"
                )),
                Endpoint::Unsupported {
                    platform,
                    variables,
                } => Err(format!(
                    "{variables} ({platform}), a managed identity the Azure SDK for Rust does not support"
                )),
            }
        }
        #[cfg(feature = "github-actions")]
        crate::sources::github_actions::KIND => {
            if crate::sources::github_actions::variables_present(ctx) {
                Ok("ACTIONS_ID_TOKEN_REQUEST_URL and ACTIONS_ID_TOKEN_REQUEST_TOKEN are set (a GitHub \
                    Actions job with id-token: write)"
                    .into())
            } else {
                Err(crate::sources::github_actions::variables_missing())
            }
        }
        #[cfg(feature = "az-cli")]
        crate::sources::az_cli::KIND => crate::sources::az_cli::locate(ctx)
            .map(|az| format!("az is installed ({})", az.display()))
            .ok_or_else(|| "az is not on PATH".into()),
        #[cfg(feature = "azure-developer-cli")]
        crate::sources::azure_developer_cli::KIND => {
            crate::sources::azure_developer_cli::locate(ctx)
                .map(|azd| format!("azd is installed ({})", azd.display()))
                .ok_or_else(|| "azd is not on PATH".into())
        }
        _ => Ok("registered by the application".into()),
    }
}
