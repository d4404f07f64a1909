//! The client-secret and client-certificate sources through the real SDK against the Entra stand-in.

use pgwi_credentials::{CredentialConfig, ErrorKind, SourceContext, SourceRegistry};
use pgwi_testsupport::certificate::ClientCertificate;
use pgwi_testsupport::entra::{ClientSecret, EntraOptions, EntraStandIn};

use crate::support::test_env;

/// An application in the stand-in with the given secrets and certificates.
async fn application(
    secrets: Vec<ClientSecret>,
    certificates: Vec<ClientCertificate>,
) -> EntraStandIn {
    pgwi_testsupport::init_test_logging();
    let mut options = EntraOptions::new("no workload identity here");
    options.client_secrets = secrets;
    options.certificates = certificates.into_iter().map(|c| c.registered).collect();
    EntraStandIn::start(options).await.expect("Entra stand-in")
}

fn context(entra: &EntraStandIn, extra: &[(&str, &str)]) -> SourceContext {
    let mut env = entra.service_principal_environment();
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    SourceContext {
        env: test_env(env),
        azure_client_options: Some(entra.azure_client_options().expect("client options")),
    }
}

fn config(kind: &str) -> CredentialConfig {
    CredentialConfig {
        kind: kind.into(),
        ..CredentialConfig::default()
    }
}

#[tokio::test]
async fn a_client_secret_from_the_environment_gets_a_token() {
    // Scenario: AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_CLIENT_SECRET, as the SDKs' environment credential
    // reads them: Entra issues a token, and the source describes itself without the secret.
    let secret = ClientSecret::generate(false);
    let entra = application(vec![secret.clone()], vec![]).await;
    let ctx = context(&entra, &[("AZURE_CLIENT_SECRET", &secret.value)]);

    let source = SourceRegistry::default()
        .build(&config("client-secret"), &ctx)
        .expect("source");
    let token = source.token().await.expect("token");

    assert_eq!(
        entra.issued_tokens(),
        vec![token.secret().expose().to_owned()]
    );
    assert_eq!(
        source.info().detail("secret"),
        Some("variable AZURE_CLIENT_SECRET")
    );
    assert!(!format!("{source:?} {}", source.info()).contains(&secret.value));
}

#[tokio::test]
async fn a_client_secret_from_a_file_wins_over_the_variable() {
    // Scenario: credential.client_secret.secret_file names a file with the current secret while the
    // variable holds a stale one: the file's secret is sent.
    let secret = ClientSecret::generate(false);
    let entra = application(vec![secret.clone()], vec![]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("client-secret");
    std::fs::write(&file, format!("{}\n", secret.value)).expect("write");
    let mut config = config("client-secret");
    config.client_secret.secret_file = Some(file.clone());
    let ctx = context(&entra, &[("AZURE_CLIENT_SECRET", "stale-secret-value")]);

    let source = SourceRegistry::default()
        .build(&config, &ctx)
        .expect("source");

    source.token().await.expect("token");
    assert_eq!(
        source.info().detail("secret"),
        Some(format!("file {}", file.display()).as_str())
    );
}

#[tokio::test]
async fn an_expired_client_secret_is_aadsts7000222_with_the_fix() {
    // Scenario: the secret has passed its end date: one error with AADSTS7000222, saying it expired, how to
    // make a new one, and where the old one came from.
    let secret = ClientSecret::generate(true);
    let entra = application(vec![secret.clone()], vec![]).await;
    let ctx = context(&entra, &[("AZURE_CLIENT_SECRET", &secret.value)]);

    let source = SourceRegistry::default()
        .build(&config("client-secret"), &ctx)
        .expect("source");
    let error = source.token().await.expect_err("expired");

    assert_eq!(error.code(), Some("7000222"), "{error}");
    assert_eq!(error.kind(), ErrorKind::Entra);
    assert!(
        error.fix().contains("has expired") && error.fix().contains("credential reset"),
        "{error}"
    );
    assert!(
        error.fix().contains("variable AZURE_CLIENT_SECRET"),
        "{error}"
    );
    assert!(!error.to_string().contains(&secret.value));
}

#[tokio::test]
async fn a_wrong_client_secret_is_aadsts7000215() {
    // Scenario: the secret's ID was pasted instead of its value: AADSTS7000215 says to use the Value.
    let entra = application(vec![ClientSecret::generate(false)], vec![]).await;
    let ctx = context(
        &entra,
        &[("AZURE_CLIENT_SECRET", "0a1b2c3d-secret-id-not-value")],
    );

    let error = SourceRegistry::default()
        .build(&config("client-secret"), &ctx)
        .expect("source")
        .token()
        .await
        .expect_err("wrong secret");

    assert_eq!(error.code(), Some("7000215"), "{error}");
    assert!(error.fix().contains("Value"), "{error}");
}

#[tokio::test]
async fn a_missing_tenant_names_the_variable_and_the_key() {
    // Scenario: AZURE_TENANT_ID is missing: a configuration error naming it and
    // credential.client_secret.tenant_id.
    let ctx = SourceContext {
        env: test_env([
            ("AZURE_CLIENT_ID", "app"),
            ("AZURE_CLIENT_SECRET", "s3cret-value"),
        ]),
        ..SourceContext::default()
    };

    let error = SourceRegistry::default()
        .build(&config("client-secret"), &ctx)
        .expect_err("no tenant");

    assert!(error.is_configuration());
    assert!(
        error.problem().contains("AZURE_TENANT_ID")
            && error
                .problem()
                .contains("credential.client_secret.tenant_id"),
        "{error}"
    );
}

#[test]
fn an_inline_secret_is_allowed_with_a_warning() {
    // Scenario: credential.client_secret.secret inline: the source builds, and the log says to use a file or
    // a variable instead, without the secret.
    let logs = pgwi_testsupport::logs::LogCapture::start();
    let mut config = config("client-secret");
    config.client_secret.secret = Some("inline-secret-value-123".to_owned().into());
    config.client_secret.tenant_id = Some("72f988bf-86f1-41af-91ab-2d7cd011db47".into());
    config.client_secret.client_id = Some("5a7bd1c0-3f12-4c8e-9d1e-0123456789ab".into());

    SourceRegistry::default()
        .build(
            &config,
            &crate::support::test_context(Vec::<(String, String)>::new()),
        )
        .expect("source");

    let logged = logs.contents();
    assert!(
        logged.contains("secret_file") && logged.contains("secret_env"),
        "{logged}"
    );
    assert!(!logged.contains("inline-secret-value-123"));
}

#[tokio::test]
async fn a_certificate_signs_an_assertion_entra_verifies() {
    // Scenario: AZURE_CLIENT_CERTIFICATE_PATH names a PEM with certificate and key: pgwi signs an RS256
    // assertion that the stand-in verifies against the registered certificate, and gets a token.
    let certificate = ClientCertificate::generate("pgwi-ci").expect("certificate");
    let dir = tempfile::tempdir().expect("dir");
    let path = certificate.write_pem(dir.path()).expect("pem");
    let entra = application(vec![], vec![certificate]).await;
    let ctx = context(
        &entra,
        &[("AZURE_CLIENT_CERTIFICATE_PATH", &path.display().to_string())],
    );

    let source = SourceRegistry::default()
        .build(&config("client-certificate"), &ctx)
        .expect("source");
    let token = source.token().await.expect("token");

    assert_eq!(
        entra.issued_tokens(),
        vec![token.secret().expose().to_owned()]
    );
    assert_eq!(entra.rejections(), Vec::<String>::new());
    assert_eq!(source.info().detail("thumbprint").map(str::len), Some(40));
}

#[rstest::rstest]
#[case::leaf_only(None, false)]
#[case::chain_from_the_variable(Some("true"), true)]
#[tokio::test]
async fn the_chain_is_sent_in_x5c_only_when_asked(
    #[case] send_chain: Option<&str>,
    #[case] expect_x5c: bool,
) {
    // Scenario: AZURE_CLIENT_SEND_CERTIFICATE_CHAIN=true puts the certificate chain in the assertion's
    // `x5c` (subject-name/issuer authentication); without it only the thumbprints are sent.
    let certificate = ClientCertificate::generate("pgwi-ci").expect("certificate");
    let dir = tempfile::tempdir().expect("dir");
    let path = certificate.write_pem(dir.path()).expect("pem");
    let entra = application(vec![], vec![certificate]).await;
    let path = path.display().to_string();
    let mut extra = vec![("AZURE_CLIENT_CERTIFICATE_PATH", path.as_str())];
    if let Some(value) = send_chain {
        extra.push(("AZURE_CLIENT_SEND_CERTIFICATE_CHAIN", value));
    }
    let ctx = context(&entra, &extra);

    SourceRegistry::default()
        .build(&config("client-certificate"), &ctx)
        .expect("source")
        .token()
        .await
        .expect("token");

    let headers = entra.certificate_assertion_headers();
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert_eq!(headers[0]["alg"], "RS256");
    assert!(headers[0]["x5t"].is_string());
    assert_eq!(
        headers[0]["x5c"].as_array().map(Vec::len),
        expect_x5c.then_some(1),
        "{headers:?}"
    );
}

#[tokio::test]
async fn a_certificate_the_application_does_not_know_is_aadsts700027() {
    // Scenario: a certificate that was never uploaded to the application: AADSTS700027 with the upload
    // command and the certificate's thumbprint.
    let registered = ClientCertificate::generate("registered").expect("certificate");
    let other = ClientCertificate::generate("not-registered").expect("certificate");
    let dir = tempfile::tempdir().expect("dir");
    let path = other.write_pem(dir.path()).expect("pem");
    let entra = application(vec![], vec![registered]).await;
    let ctx = context(
        &entra,
        &[("AZURE_CLIENT_CERTIFICATE_PATH", &path.display().to_string())],
    );

    let source = SourceRegistry::default()
        .build(&config("client-certificate"), &ctx)
        .expect("source");
    let error = source.token().await.expect_err("unknown certificate");

    assert_eq!(error.code(), Some("700027"), "{error}");
    assert!(
        error.fix().contains("--cert") && error.fix().contains("thumbprint"),
        "{error}"
    );
}

#[rstest::rstest]
#[case::encrypted_key(
    "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
    "encrypted"
)]
#[case::pfx("\u{30}\u{82}binary pkcs12", "not PEM")]
fn pfx_files_and_encrypted_keys_get_the_openssl_conversion(
    #[case] contents: &str,
    #[case] problem: &str,
) {
    // Scenario: a PFX file or an encrypted key, which pgwi does not read: one configuration error with the
    // exact openssl command that converts it.
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("cert.pfx");
    std::fs::write(&path, contents).expect("write");
    let ctx = crate::support::test_context([
        ("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47"),
        ("AZURE_CLIENT_ID", "5a7bd1c0-3f12-4c8e-9d1e-0123456789ab"),
        (
            "AZURE_CLIENT_CERTIFICATE_PATH",
            path.to_str().expect("utf-8"),
        ),
    ]);

    let error = SourceRegistry::default()
        .build(&config("client-certificate"), &ctx)
        .expect_err("refused");

    assert!(error.is_configuration(), "{error}");
    assert!(error.problem().contains(problem), "{error}");
    assert!(
        error
            .fix()
            .contains(&format!("openssl pkcs12 -in {} -out", path.display()))
            && error.fix().contains("-nodes"),
        "{error}"
    );
}

#[tokio::test]
async fn the_assertion_audience_is_the_url_the_sdk_posts_to() {
    // Scenario: AZURE_AUTHORITY_HOST carries a path; the SDK posts to the host joined with
    // /<tenant>/oauth2/v2.0/token, which drops that path. The assertion's aud is built the same way, so the
    // stand-in (which requires aud to be the URL posted to) accepts it and x5t names the same certificate.
    let certificate = ClientCertificate::generate("pgwi-ci").expect("certificate");
    let dir = tempfile::tempdir().expect("dir");
    let path = certificate.write_pem(dir.path()).expect("pem");
    let entra = application(vec![], vec![certificate]).await;
    let host_with_path = format!("{}some/path/", entra.authority_host());
    let ctx = context(
        &entra,
        &[
            ("AZURE_CLIENT_CERTIFICATE_PATH", &path.display().to_string()),
            ("AZURE_AUTHORITY_HOST", &host_with_path),
        ],
    );

    let source = SourceRegistry::default()
        .build(&config("client-certificate"), &ctx)
        .expect("source");
    source.token().await.expect("token");

    assert_eq!(entra.rejections(), Vec::<String>::new());
}

#[tokio::test]
async fn a_tenant_id_the_sdk_refuses_names_where_it_came_from() {
    // Scenario: AZURE_TENANT_ID holds characters a tenant id cannot have: the SDK refuses it, and the
    // configuration error says it came from AZURE_TENANT_ID and how to set it.
    let secret = ClientSecret::generate(false);
    let entra = application(vec![secret.clone()], vec![]).await;
    let ctx = context(
        &entra,
        &[
            ("AZURE_CLIENT_SECRET", secret.value.as_str()),
            ("AZURE_TENANT_ID", "not a tenant!"),
        ],
    );

    let error = SourceRegistry::default()
        .build(&config("client-secret"), &ctx)
        .expect_err("refused tenant");

    assert!(error.is_configuration(), "{error}");
    assert!(
        error.fix().contains("from AZURE_TENANT_ID")
            && error.fix().contains("credential.client_secret.tenant_id"),
        "{error}"
    );
}
