//! [`SourceKind`]: everything pgwi knows about one kind of token source — its name, its keys, how to build it,
//! whether it can work here and what `pgwi doctor` shows of its inputs — so that a kind is one file and one
//! registration line ([`crate::SourceRegistry::register`]), whether it is built in or an application's own.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::{CredentialConfig, CredentialError, SourceContext, TokenSource};

/// One kind of token source, as `credential.kind` and `credential.chain` name it.
///
/// The built-in kinds (one per file under [`crate::sources`]) and an application's own kinds implement it
/// alike; the registry, `auto`'s chain, `pgwi doctor` and `pgwi --help` only go through it.
///
/// ```
/// use std::sync::Arc;
///
/// use pgwi_credentials::{
///     CredentialConfig, CredentialError, SourceContext, SourceInfo, SourceKind, SourceRegistry, Token,
///     TokenSource,
/// };
///
/// /// The keys of `credential.vault`; `deny_unknown_fields` makes a typo a configuration error.
/// #[derive(serde::Deserialize)]
/// #[serde(deny_unknown_fields)]
/// struct VaultConfig {
///     path: String,
/// }
///
/// /// The kind: registered once, named once.
/// struct Vault;
///
/// impl SourceKind for Vault {
///     const NAME: &'static str = "vault";
///     type Config = VaultConfig;
///
///     fn build(
///         &self,
///         config: &VaultConfig,
///         _credential: &CredentialConfig,
///         _ctx: &SourceContext,
///     ) -> Result<Arc<dyn TokenSource>, CredentialError> {
///         Ok(Arc::new(VaultSource { path: config.path.clone() }))
///     }
///
///     fn presence(
///         &self,
///         config: &VaultConfig,
///         _credential: &CredentialConfig,
///         _ctx: &SourceContext,
///     ) -> Result<String, String> {
///         Ok(format!("credential.vault.path is {}", config.path))
///     }
/// }
///
/// #[derive(Debug)]
/// struct VaultSource {
///     path: String,
/// }
///
/// #[async_trait::async_trait]
/// impl TokenSource for VaultSource {
///     async fn token(&self) -> Result<Token, CredentialError> {
///         Ok(Token::new(format!("secret-at-{}", self.path), None))
///     }
///
///     fn info(&self) -> SourceInfo {
///         SourceInfo::new(Vault::NAME).with("path", &self.path)
///     }
/// }
///
/// let mut registry = SourceRegistry::default();
/// registry.register(Vault);
/// assert!(registry.kinds().contains(&"vault".to_owned()));
/// ```
pub trait SourceKind: Send + Sync + 'static {
    /// The kind's name in `credential.kind` and `credential.chain`. Its keys are the table
    /// `credential.<NAME with '-' written as '_'>`.
    const NAME: &'static str;

    /// Its place in `auto`'s default chain (when `credential.chain` is unset), lower first; `None`: `auto`
    /// tries it only when `credential.chain` names it.
    const CHAIN_POSITION: Option<u16> = None;

    /// Its keys, deserialized from its table (absent: from an empty table).
    type Config: DeserializeOwned;

    /// Reads its keys from the `credential` section. The default deserializes its table from
    /// [`CredentialConfig::custom`], so an unknown or mistyped key is a configuration error naming the
    /// table; the built-in kinds read their typed field of [`CredentialConfig`] instead.
    fn config(&self, credential: &CredentialConfig) -> Result<Self::Config, CredentialError> {
        credential.section(Self::NAME)
    }

    /// Builds the source. It may read files and variables but contacts nothing: the first token request does.
    fn build(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError>;

    /// Whether it can work here: `Ok(which inputs are there)` or `Err(what is missing)`. Nothing is built
    /// or contacted; `auto` skips a kind that answers `Err`, and `pgwi doctor` shows either answer.
    fn presence(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String>;

    /// What `pgwi doctor` shows about its inputs (never a secret). The default builds the source and shows
    /// its [`crate::SourceInfo`], which is right for kinds that resolve their inputs when built.
    fn inputs(
        &self,
        config: &Self::Config,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, CredentialError> {
        Ok(self.build(config, credential, ctx)?.info().to_string())
    }
}

/// The table name of `kind` under `credential` (`static-password` → `static_password`).
pub(crate) fn section_name(kind: &str) -> String {
    kind.replace('-', "_")
}

/// A [`SourceKind`] with its configuration type erased, so that the registry can hold kinds of any type.
pub(crate) trait RegisteredKind: Send + Sync {
    fn name(&self) -> &'static str;
    fn chain_position(&self) -> Option<u16>;
    /// Reads its keys, for the error alone.
    fn check(&self, credential: &CredentialConfig) -> Result<(), CredentialError>;
    fn build_source(
        &self,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError>;
    fn presence_here(
        &self,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String>;
    fn describe_inputs(
        &self,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, CredentialError>;
}

impl<K: SourceKind> RegisteredKind for K {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn chain_position(&self) -> Option<u16> {
        K::CHAIN_POSITION
    }

    fn check(&self, credential: &CredentialConfig) -> Result<(), CredentialError> {
        self.config(credential).map(drop)
    }

    fn build_source(
        &self,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<Arc<dyn TokenSource>, CredentialError> {
        SourceKind::build(self, &self.config(credential)?, credential, ctx)
    }

    fn presence_here(
        &self,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, String> {
        // Keys that do not parse leave the kind unable to work; the build reports them as an error.
        let config = self
            .config(credential)
            .map_err(|e| e.problem().to_owned())?;
        SourceKind::presence(self, &config, credential, ctx)
    }

    fn describe_inputs(
        &self,
        credential: &CredentialConfig,
        ctx: &SourceContext,
    ) -> Result<String, CredentialError> {
        SourceKind::inputs(self, &self.config(credential)?, credential, ctx)
    }
}
