//! Maps the configuration's `kind` to a [`SourceKind`], plugin-style: the built-in kinds are registered by
//! default and an application can add its own (say, a secret store) without forking. Everything that lists
//! kinds — `credential.kind`'s errors, `auto`'s default chain, `pgwi doctor`, `pgwi --help` — asks the
//! registry, so a kind is named once, by its [`SourceKind::NAME`].

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::chain::ChainSource;
use crate::kind::{RegisteredKind, section_name};
use crate::{
    CachedTokenSource, CredentialConfig, CredentialError, Environment, SourceKind, TokenSource,
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

/// The kind that picks a source from what the environment offers.
pub const AUTO: &str = "auto";

/// The known kinds, by name.
#[derive(Clone)]
pub struct SourceRegistry {
    kinds: BTreeMap<&'static str, Arc<dyn RegisteredKind>>,
}

impl fmt::Debug for SourceRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SourceRegistry")
            .field("kinds", &self.kinds())
            .finish()
    }
}

impl Default for SourceRegistry {
    /// The built-in kinds this crate was compiled with (each behind the cargo feature of its name).
    fn default() -> Self {
        // One line per kind, behind its feature; a build without any kind uses none of these modules.
        #[allow(unused_imports)]
        use crate::sources::*;
        // Not mutated at all in a build without any kind.
        #[allow(unused_mut)]
        let mut registry = Self::empty();
        #[cfg(feature = "static-password")]
        registry.register(static_password::StaticPasswordKind);
        #[cfg(feature = "client-secret")]
        registry.register(client_secret::ClientSecretKind);
        #[cfg(feature = "client-certificate")]
        registry.register(client_certificate::ClientCertificateKind);
        #[cfg(feature = "workload-identity")]
        registry.register(workload_identity::WorkloadIdentityKind);
        #[cfg(feature = "managed-identity")]
        registry.register(managed_identity::ManagedIdentityKind);
        #[cfg(feature = "github-actions")]
        registry.register(github_actions::GithubActionsKind);
        #[cfg(feature = "az-cli")]
        registry.register(az_cli::AzCliKind);
        #[cfg(feature = "azure-developer-cli")]
        registry.register(azure_developer_cli::AzureDeveloperCliKind);
        registry
    }
}

impl SourceRegistry {
    /// A registry with no kinds at all.
    pub fn empty() -> Self {
        Self {
            kinds: BTreeMap::new(),
        }
    }

    /// Registers (or replaces) the kind named [`SourceKind::NAME`]. Its keys live in the `credential.<kind>`
    /// table (with `-` written as `_`).
    pub fn register<K: SourceKind>(&mut self, kind: K) -> &mut Self {
        self.kinds.insert(K::NAME, Arc::new(kind));
        self
    }

    /// Every kind `credential.kind` may name, `auto` included, sorted.
    pub fn kinds(&self) -> Vec<String> {
        let mut kinds: Vec<String> = self.kinds.keys().map(|k| (*k).to_owned()).collect();
        kinds.push(AUTO.to_owned());
        kinds.sort();
        kinds
    }

    /// The kinds `auto` tries when `credential.chain` is unset: those with a
    /// [`SourceKind::CHAIN_POSITION`], in its order. For the built-in kinds: a static password only where
    /// one is configured, then a service principal from the environment, workload identity, managed
    /// identity, and a developer's own login through `az` then `azd` (the order of the Azure SDKs'
    /// `DefaultAzureCredential`); `github-actions` only when named.
    pub fn default_chain(&self) -> Vec<&'static str> {
        let mut chain: Vec<(u16, &'static str)> = self
            .kinds
            .values()
            .filter_map(|kind| Some((kind.chain_position()?, kind.name())))
            .collect();
        chain.sort();
        chain.into_iter().map(|(_, name)| name).collect()
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
        let source = self.kind(kind)?.build_source(config, ctx)?;
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

    /// `credential.kind = "auto"`: the chain of `credential.chain` (default [`Self::default_chain`]),
    /// resolved at the first token request, whose [`ChainSource::steps`] say what became of each source (what
    /// `pgwi doctor` shows). Fails at once when no source of the chain has its inputs.
    pub fn build_chain(
        &self,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<ChainSource>, CredentialError> {
        self.check_sections(config)?;
        let kinds = self.chain(config)?;
        ChainSource::new(self.clone(), config.clone(), ctx.clone(), kinds).map(Arc::new)
    }

    /// The kinds `auto` tries, in order: `credential.chain`, or [`Self::default_chain`]. A kind in
    /// `credential.chain` that is not registered is a configuration error.
    pub fn chain(&self, config: &CredentialConfig) -> Result<Vec<String>, CredentialError> {
        let Some(kinds) = &config.chain else {
            return Ok(self
                .default_chain()
                .into_iter()
                .map(str::to_owned)
                .collect());
        };
        let known = self.names().join(", ");
        if let Some(kind) = kinds.iter().find(|k| !self.kinds.contains_key(k.trim())) {
            return Err(CredentialError::configuration(
                "credential",
                format!(
                    "credential.chain names {kind:?}, which is not a token source of this build"
                ),
                format!(
                    "use kinds from: {known} (a built-in kind is missing when pgwi was built without its \
                     cargo feature)"
                ),
            ));
        }
        if kinds.is_empty() {
            return Err(CredentialError::configuration(
                "credential",
                "credential.chain is empty",
                format!(
                    "leave it unset for the default order ({}) or list kinds from: {known}",
                    self.default_chain().join(", "),
                ),
            ));
        }
        Ok(kinds.iter().map(|k| k.trim().to_owned()).collect())
    }

    /// Whether `kind` can work in this configuration and environment: `Ok(which inputs)` or `Err(what is
    /// missing)` ([`SourceKind::presence`]). Nothing is built or contacted.
    pub fn presence(
        &self,
        kind: &str,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        match self.kinds.get(kind) {
            Some(registered) => registered.presence_here(config, ctx),
            None => Err(format!("{kind} is not a token source of this build")),
        }
    }

    /// What `pgwi doctor` shows about `kind`'s inputs ([`SourceKind::inputs`]), or what is wrong with them.
    pub fn inputs(
        &self,
        kind: &str,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, CredentialError> {
        self.kind(kind)?.describe_inputs(config, ctx)
    }

    /// Builds one kind's source, without the checks of [`Self::build`]: for `auto`'s chain.
    pub(crate) fn build_kind(
        &self,
        kind: &str,
        config: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        self.kind(kind)?.build_source(config, ctx)
    }

    fn kind(&self, kind: &str) -> Result<&Arc<dyn RegisteredKind>, CredentialError> {
        self.kinds.get(kind).ok_or_else(|| {
            CredentialError::configuration(
                "credential",
                format!("credential.kind = {kind:?} is not a known token source"),
                format!("use one of: {}", self.kinds().join(", ")),
            )
        })
    }

    fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }

    /// Every table in `credential` must belong to a registered kind and hold that kind's keys: a typo is an
    /// error even in the table of a kind that is not chosen, as it is for the built-in kinds at load.
    fn check_sections(&self, config: &CredentialConfig) -> Result<(), CredentialError> {
        for key in config.custom.keys() {
            let registered = self.kinds.values().find(|k| section_name(k.name()) == *key);
            let Some(registered) = registered else {
                let tables: Vec<String> = self.names().into_iter().map(section_name).collect();
                return Err(CredentialError::configuration(
                    "credential",
                    format!("credential.{key} is not a known key"),
                    format!(
                        "known keys: kind, chain, scope, refresh_margin_secs, fetch_timeout_secs, \
                         expiry_skew_secs, and one table per kind ({})",
                        tables.join(", ")
                    ),
                ));
            };
            registered.check(config)?;
        }
        Ok(())
    }
}
