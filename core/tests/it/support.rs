//! Helpers: a configuration pointing at a test database, and a static-password source for it.

use std::sync::Arc;

use pgwi_core::Config;
use pgwi_credentials::{
    CacheOptions, CachedTokenSource, CredentialConfig, Environment, SourceContext, SourceRegistry,
};
use pgwi_testsupport::TestDatabase;

/// A configuration for `db` as `user`, verify-full against the bench's CA.
pub(crate) fn config_for(db: &TestDatabase, user: &str) -> Config {
    let mut config = Config::for_server("127.0.0.1", db.server().port(), db.name(), user);
    config.database.ssl_root_cert = Some(db.server().ca_file().to_owned());
    config.database.connect_timeout_secs = 10;
    config
}

/// A static-password source that reads `PGPASSWORD` from a fixed environment.
pub(crate) fn static_password(password: &str) -> Arc<CachedTokenSource> {
    let config = CredentialConfig {
        kind: "static-password".into(),
        ..CredentialConfig::default()
    };
    let ctx = SourceContext {
        env: Environment::from_pairs([("PGPASSWORD", password)]),
        ..SourceContext::default()
    };
    let source = SourceRegistry::default()
        .build(&config, &ctx)
        .expect("static source");
    Arc::new(CachedTokenSource::new(source, CacheOptions::default()))
}
