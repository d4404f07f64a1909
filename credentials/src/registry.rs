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
    #[cfg(any(feature = "workload-identity", feature = "az-cli"))]
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
            return self.build_auto(config, ctx);
        }
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

    /// `auto`: workload identity when the webhook's variables are present, else a static password when one
    /// is configured or its variable is set, else the Azure CLI.
    fn build_auto(
        &self,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        let (kind, why) = auto_choice(config, ctx);
        let factory = self.factories.get(kind).ok_or_else(|| {
            CredentialError::configuration(
                "credential",
                format!("credential.kind = \"auto\" chose {kind} ({why}), but this build has no {kind} source"),
                format!("set credential.kind to one of: {}", self.kinds().join(", ")),
            )
        })?;
        let source = factory(config, ctx)?;
        tracing::info!(
            source = %source,
            reason = why,
            "credential.kind = auto chose {kind}; name the kind explicitly in production"
        );
        Ok(Arc::new(AutoChosen { inner: source, why }))
    }

    fn check_sections(&self, config: &CredentialConfig) -> Result<(), CredentialError> {
        for key in config.custom.keys() {
            if !self.factories.contains_key(&key.replace('_', "-")) {
                return Err(CredentialError::configuration(
                    "credential",
                    format!("credential.{key} is not a known key"),
                    format!(
                        "known keys: kind, scope, refresh_margin_secs, fetch_timeout_secs, expiry_skew_secs, and one table per kind ({})",
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

/// Which kind `auto` picks for this configuration and environment, and why.
pub fn auto_choice(config: &CredentialConfig, ctx: &SourceContext) -> (&'static str, &'static str) {
    let sp = &config.static_password;
    let wi = &config.workload_identity;
    if wi.token_file.is_some() || ctx.env.get("AZURE_FEDERATED_TOKEN_FILE").is_some() {
        (
            "workload-identity",
            "AZURE_FEDERATED_TOKEN_FILE is set (AKS workload identity webhook)",
        )
    } else if sp.password_file.is_some() || sp.password.is_some() {
        ("static-password", "a static password is configured")
    } else if ctx.env.get(&sp.password_env).is_some() {
        ("static-password", "the static password's variable is set")
    } else {
        (
            "az-cli",
            "no workload identity and no static password: falling back to the Azure CLI",
        )
    }
}

/// The source `auto` chose, remembering why.
#[derive(Debug)]
struct AutoChosen {
    inner: Arc<dyn TokenSource>,
    why: &'static str,
}

#[async_trait::async_trait]
impl TokenSource for AutoChosen {
    async fn token(&self) -> Result<crate::Token, CredentialError> {
        self.inner.token().await
    }

    fn info(&self) -> SourceInfo {
        self.inner
            .info()
            .with("chosen_by", format!("auto: {}", self.why))
    }
}
