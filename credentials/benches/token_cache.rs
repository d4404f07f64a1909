//! What pgwi's token cache costs next to the Azure SDK it wraps: `CachedTokenSource::token()` on a cache
//! hit, against the baseline of `WorkloadIdentityCredential::get_token` answering from the SDK's own cache
//! (the same request without pgwi's layer). Both run against the local Entra stand-in, so no request leaves
//! the machine after the first. Read the two results as a ratio (pgwi / SDK); absolute times depend on the
//! machine.
//!
//! `cargo bench -p pgwi-credentials --bench token_cache`

use std::sync::Arc;

use azure_core::credentials::TokenCredential as _;
use azure_identity::{
    ClientAssertionCredentialOptions, WorkloadIdentityCredential, WorkloadIdentityCredentialOptions,
};
use criterion::{Criterion, criterion_group, criterion_main};
use pgwi_credentials::{
    CacheOptions, CachedTokenSource, CredentialConfig, Environment, POSTGRES_SCOPE, SourceContext,
    SourceRegistry, TokenSource as _,
};
use pgwi_testsupport::entra::{EntraOptions, EntraStandIn, write_token_file};
use pgwi_testsupport::jwt::ServiceAccountToken;

fn token_cache(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    let sa_token = ServiceAccountToken::default().encode();
    let token_file = write_token_file(dir.path(), &sa_token).expect("token file");
    let entra = runtime
        .block_on(EntraStandIn::start(EntraOptions::new(sa_token)))
        .expect("stand-in");
    let options = entra.options();

    let config = CredentialConfig {
        kind: "workload-identity".into(),
        ..CredentialConfig::default()
    };
    let ctx = SourceContext {
        env: Environment::from_pairs(entra.webhook_environment(&token_file)),
        azure_client_options: Some(entra.azure_client_options().expect("client options")),
    };
    let pgwi = Arc::new(CachedTokenSource::new(
        SourceRegistry::default()
            .build(&config, &ctx)
            .expect("source"),
        CacheOptions::default(),
    ));

    let mut client_options = entra.azure_client_options().expect("client options");
    let mut cloud = azure_core::cloud::CustomConfiguration::default();
    cloud.authority_host = entra.authority_host();
    client_options.cloud = Some(Arc::new(cloud.into()));
    let sdk = WorkloadIdentityCredential::new(Some(WorkloadIdentityCredentialOptions {
        credential_options: ClientAssertionCredentialOptions { client_options },
        client_id: Some(options.client_id),
        tenant_id: Some(options.tenant_id),
        token_file_path: Some(token_file),
    }))
    .expect("sdk credential");

    // Warm both caches: one request each reaches the stand-in.
    runtime.block_on(async {
        pgwi.token().await.expect("pgwi token");
        sdk.get_token(&[POSTGRES_SCOPE], None)
            .await
            .expect("sdk token");
    });

    let mut group = c.benchmark_group("token on a cache hit");
    group.bench_function("baseline: azure_identity's own cache", |b| {
        b.iter(|| {
            runtime
                .block_on(sdk.get_token(&[POSTGRES_SCOPE], None))
                .expect("token")
        })
    });
    group.bench_function("pgwi CachedTokenSource", |b| {
        b.iter(|| runtime.block_on(pgwi.token()).expect("token"))
    });
    group.finish();
    assert_eq!(entra.request_count(), 2, "a cache hit must not reach Entra");
}

criterion_group!(benches, token_cache);
criterion_main!(benches);
