//! Helpers: a configuration pointing at a test database, a static-password source for it, and a client
//! session on an embedded proxy.

use std::sync::Arc;

use pgwi_core::Config;
use pgwi_core::proxy::{Client, Proxy};
use pgwi_credentials::{
    CacheOptions, CachedTokenSource, CredentialConfig, Environment, SourceContext, SourceRegistry,
};
use pgwi_testsupport::TestDatabase;
use tokio::io::{AsyncWriteExt as _, DuplexStream};
use tokio::task::JoinHandle;

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

/// A local client's session on `proxy` over an in-memory pipe, its start-up (protocol 3.0, user and
/// database `app`) sent: the client's end of the pipe, and the session's task.
pub(crate) async fn start_session(proxy: Proxy) -> (DuplexStream, JoinHandle<()>) {
    let (mut client, end) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(async move {
        let who = Client::local("test");
        proxy.serve(end, who).await;
    });
    let mut body = 196_608_i32.to_be_bytes().to_vec();
    body.extend(b"user\0app\0database\0app\0\0");
    let mut startup = i32::try_from(body.len() + 4)
        .expect("length")
        .to_be_bytes()
        .to_vec();
    startup.extend(body);
    client.write_all(&startup).await.expect("start-up");
    (client, served)
}
