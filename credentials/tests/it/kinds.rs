//! A kind an application adds is one file and one registration line, and from then on it is a kind like the
//! built-in ones: `credential.kind` chooses it, its `credential.<kind>` table is read with its own keys (a
//! typo is an error naming the table), `auto` asks its presence (skipping it when its inputs are absent) and
//! places it in the default chain, and what `pgwi doctor` shows of it comes from the same registry.
//!
//! `vault` below is the whole of such a file.

use pgwi_credentials::{
    ChainOutcome, CredentialConfig, SourceContext, SourceKind, SourceRegistry, TokenSource as _,
};

use crate::support::test_context;

/// The application's file: its keys, its source and its kind.
mod vault {
    use std::sync::Arc;

    use async_trait::async_trait;
    use pgwi_credentials::{
        CredentialConfig, CredentialError, SourceContext, SourceInfo, SourceKind, Token,
        TokenSource,
    };

    /// The keys of `credential.vault`.
    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct VaultConfig {
        /// The secret's path.
        pub(crate) path: String,
        /// The variable with the vault's address.
        #[serde(default = "default_address_env")]
        pub(crate) address_env: String,
    }

    fn default_address_env() -> String {
        "VAULT_ADDR".into()
    }

    /// A password read from a secret store (here: made up from the path and the address).
    #[derive(Debug)]
    pub(crate) struct VaultSource {
        address: String,
        path: String,
    }

    #[async_trait]
    impl TokenSource for VaultSource {
        async fn token(&self) -> Result<Token, CredentialError> {
            Ok(Token::new(
                format!("vault-password-for-{}", self.path),
                None,
            ))
        }

        fn info(&self) -> SourceInfo {
            SourceInfo::new(Vault::NAME)
                .with("address", &self.address)
                .with("path", &self.path)
        }
    }

    /// The kind.
    pub(crate) struct Vault;

    impl SourceKind for Vault {
        const NAME: &'static str = "vault";
        // After workload identity (40), before managed identity (50).
        const CHAIN_POSITION: Option<u16> = Some(45);
        type Config = VaultConfig;

        fn build(
            &self,
            config: &VaultConfig,
            _credential: &CredentialConfig,
            ctx: &SourceContext,
        ) -> Result<Arc<dyn TokenSource>, CredentialError> {
            let address = ctx.env.get(&config.address_env).ok_or_else(|| {
                CredentialError::configuration(
                    Self::NAME,
                    format!("{} is not set", config.address_env),
                    "export the vault's address",
                )
            })?;
            Ok(Arc::new(VaultSource {
                address,
                path: config.path.clone(),
            }))
        }

        fn presence(
            &self,
            config: &VaultConfig,
            _credential: &CredentialConfig,
            ctx: &SourceContext,
        ) -> Result<String, String> {
            match ctx.env.get(&config.address_env) {
                Some(address) => Ok(format!("{} is set ({address})", config.address_env)),
                None => Err(format!("{} is not set", config.address_env)),
            }
        }
    }
}

/// The application's one registration line.
fn registry() -> SourceRegistry {
    let mut registry = SourceRegistry::default();
    registry.register(vault::Vault);
    registry
}

fn config_with_vault(kind: &str, table: serde_json::Value) -> CredentialConfig {
    let mut config = CredentialConfig {
        kind: kind.into(),
        ..CredentialConfig::default()
    };
    config.custom.insert("vault".into(), table);
    config
}

fn vault_context() -> SourceContext {
    test_context([("VAULT_ADDR", "https://vault.internal:8200")])
}

#[tokio::test]
async fn credential_kind_chooses_it_and_its_table_is_read() {
    // Scenario: credential.kind = "vault" with [credential.vault] path = "db/app": the application's
    // source is built from its own keys and gives the password.
    let config = config_with_vault("vault", serde_json::json!({"path": "db/app"}));

    let source = registry().build(&config, &vault_context()).expect("source");
    let token = source.token().await.expect("token");

    assert_eq!(token.secret().expose(), "vault-password-for-db/app");
    assert_eq!(
        source.to_string(),
        "vault (address=https://vault.internal:8200, path=db/app)"
    );
    assert!(registry().kinds().contains(&vault::Vault::NAME.to_owned()));
}

#[test]
fn an_unknown_key_in_its_table_is_a_configuration_error_naming_it() {
    // Scenario: a typo in [credential.vault] is refused with the table and the key, whichever kind is
    // chosen, as a typo in a built-in kind's table is at load.
    for kind in ["vault", "static-password"] {
        let config = config_with_vault(kind, serde_json::json!({"path": "db/app", "pth": "x"}));

        let error = registry()
            .build(&config, &test_context([("PGPASSWORD", "p")]))
            .expect_err("unknown key");

        assert!(error.is_configuration(), "{error}");
        assert!(error.problem().contains("credential.vault"), "{error}");
        assert!(error.problem().contains("pth"), "{error}");
    }
}

#[tokio::test]
async fn auto_asks_its_presence_and_places_it_in_the_default_chain() {
    // Scenario: no credential.chain; the vault's address is set and no built-in kind before it has its
    // inputs: auto skips those, chooses the vault, and says why.
    let registry = registry();
    let config = config_with_vault("auto", serde_json::json!({"path": "db/app"}));

    let chain = registry
        .build_chain(&config, &vault_context())
        .expect("chain");
    let token = chain.token().await.expect("token");

    assert_eq!(token.secret().expose(), "vault-password-for-db/app");
    let default_chain = registry.default_chain();
    let at = |kind: &str| default_chain.iter().position(|k| *k == kind);
    assert!(at("workload-identity") < at("vault") && at("vault") < at("managed-identity"));
    let step = chain
        .steps()
        .into_iter()
        .find(|step| step.kind == "vault")
        .expect("vault step");
    assert!(
        matches!(&step.outcome, ChainOutcome::Chosen { why } if why.contains("VAULT_ADDR is set")),
        "{step:?}"
    );
}

#[tokio::test]
async fn auto_skips_it_when_its_inputs_are_absent() {
    // Scenario: credential.chain = ["vault", "static-password"] without VAULT_ADDR: the application's kind
    // is no longer "always present": auto skips it with its own reason and uses the password.
    let mut config = config_with_vault("auto", serde_json::json!({"path": "db/app"}));
    config.chain = Some(vec!["vault".into(), "static-password".into()]);
    let ctx = test_context([("PGPASSWORD", "local")]);

    let chain = registry().build_chain(&config, &ctx).expect("chain");
    let token = chain.token().await.expect("token");

    assert_eq!(token.secret().expose(), "local");
    let steps = chain.steps();
    assert!(
        matches!(&steps[0].outcome, ChainOutcome::Skipped { reason } if reason == "VAULT_ADDR is not set"),
        "{steps:?}"
    );
}

#[test]
fn doctor_shows_its_presence_and_inputs_like_the_built_ins() {
    // Scenario: what `pgwi doctor` prints for a kind comes from the registry: the chain's presence line and
    // the kind's inputs (by default its source's description); a table without its required key is a
    // reason to skip, not a panic.
    let registry = registry();
    let config = config_with_vault("vault", serde_json::json!({"path": "db/app"}));

    let steps = pgwi_credentials::present_steps(
        &registry,
        &["vault".into(), "static-password".into()],
        &config,
        &vault_context(),
    );
    let inputs = registry.inputs("vault", &config, &vault_context());
    let missing = registry.presence("vault", &CredentialConfig::default(), &vault_context());

    assert!(
        matches!(&steps[0].outcome, ChainOutcome::Present { why } if why.contains("VAULT_ADDR")),
        "{steps:?}"
    );
    assert!(
        matches!(&steps[1].outcome, ChainOutcome::Skipped { reason } if reason.contains("PGPASSWORD")),
        "{steps:?}"
    );
    assert_eq!(
        inputs.expect("inputs"),
        "vault (address=https://vault.internal:8200, path=db/app)"
    );
    assert!(
        missing
            .as_ref()
            .is_err_and(|why| why.contains("credential.vault") && why.contains("path")),
        "{missing:?}"
    );
}
