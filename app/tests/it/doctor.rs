//! `pgwi doctor`: ✗ with the right fix for each broken link, ✓ on a good set-up.

use pgwi_testsupport::entra::Fault;
use pgwi_testsupport::fixtures::fresh_db;
use pgwi_testsupport::{TestCertificates, TestDatabase};
use rstest::rstest;

use crate::support::{Pgwi, WorkloadIdentity, assert_success, scram_role, text};

/// The line of `check` in doctor's text output, and the fix line under it.
fn line<'a>(stdout: &'a str, check: &str) -> (&'a str, &'a str) {
    let mut lines = stdout.lines();
    let found = lines
        .by_ref()
        .find(|l| l[l.find(' ').map_or(0, |i| i + 1)..].starts_with(&format!("{check}:")))
        .unwrap_or_else(|| panic!("no {check} line in:\n{stdout}"));
    let fix = lines
        .next()
        .filter(|l| l.trim_start().starts_with("fix:"))
        .unwrap_or("");
    (found, fix)
}

#[rstest]
#[tokio::test]
async fn a_good_workload_identity_setup_passes_every_check(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: everything is right; every check is ✓ and the exit status is 0; --json agrees.
    let db = fresh_db;
    // The identity's token role exists and may create in public (WorkloadIdentity makes it).
    let wi = WorkloadIdentity::start(&db).await;

    let output = Pgwi::new(&["doctor"])
        .database(&db, &wi.identity)
        .envs(wi.env())
        .output()
        .await;
    let json = Pgwi::new(&["doctor", "--json"])
        .database(&db, &wi.identity)
        .envs(wi.env())
        .output()
        .await;

    assert_success(&output);
    let stdout = text(&output.stdout);
    for check in [
        "configuration",
        "sslmode",
        "credential inputs",
        "token",
        "dns",
        "tcp",
        "tls",
        "authentication",
        "database",
        "privileges",
    ] {
        assert!(
            line(&stdout, check).0.starts_with('✓'),
            "{check} is not ✓:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("subject=system:serviceaccount:app:app"),
        "{stdout}"
    );
    assert_success(&json);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    assert_eq!(report["ok"], true);
    for secret in wi.entra.issued_tokens().iter().chain([&wi.sa_token]) {
        assert!(
            !stdout.contains(secret.as_str()) && !text(&output.stderr).contains(secret.as_str())
        );
    }
}

#[rstest]
#[tokio::test]
async fn a_missing_token_file_is_reported_with_the_webhook_fix(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: AZURE_FEDERATED_TOKEN_FILE points nowhere: credential inputs ✗ with the pod label and
    // ServiceAccount annotation in the fix; exit status 1.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let env = wi.env().into_iter().map(|(k, v)| {
        if k == "AZURE_FEDERATED_TOKEN_FILE" {
            (k, "/var/run/secrets/azure/tokens/missing".to_owned())
        } else {
            (k, v)
        }
    });

    let output = Pgwi::new(&["doctor"])
        .database(&db, &wi.identity)
        .envs(env)
        .output()
        .await;

    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    let (found, fix) = line(&stdout, "credential inputs");
    assert!(
        found.starts_with('✗') && found.contains("/var/run/secrets/azure/tokens/missing"),
        "{stdout}"
    );
    assert!(
        fix.contains("azure.workload.identity/use")
            && fix.contains("azure.workload.identity/client-id"),
        "{stdout}"
    );
}

#[rstest]
#[tokio::test]
async fn aadsts70021_is_translated(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: Entra answers AADSTS70021: the token check is ✗ and its fix names the federated credential
    // that would match the projected token.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    wi.entra.set_fault(Some(Fault::Aadsts(
        70021,
        "No matching federated identity record found for presented assertion.".into(),
    )));

    let output = Pgwi::new(&["doctor"])
        .database(&db, &wi.identity)
        .envs(wi.env())
        .output()
        .await;

    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    let (found, fix) = line(&stdout, "token");
    assert!(
        found.starts_with('✗') && found.contains("AADSTS70021"),
        "{stdout}"
    );
    assert!(
        fix.contains("subject=system:serviceaccount:app:app")
            && fix.contains("audience=api://AzureADTokenExchange"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "tcp").0.starts_with('✓'),
        "doctor keeps going where it can:\n{stdout}"
    );
}

#[rstest]
#[tokio::test]
async fn a_wrong_password_fails_authentication_with_its_causes(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Scenario: a static password that is wrong: TLS ✓, authentication ✗ explaining 28P01.
    let role = scram_role(&fresh_db).await;

    let output = Pgwi::new(&["doctor"])
        .database(&fresh_db, &role.name)
        .env("PGPASSWORD", "wrong")
        .output()
        .await;

    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    assert!(line(&stdout, "tls").0.starts_with('✓'), "{stdout}");
    let (found, fix) = line(&stdout, "authentication");
    assert!(
        found.starts_with('✗') && found.contains("28P01"),
        "{stdout}"
    );
    assert!(fix.contains("managed identity's NAME"), "{stdout}");
}

#[rstest]
#[tokio::test]
async fn an_untrusted_certificate_fails_tls(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: ssl_root_cert is a CA that did not sign the server's certificate: tls ✗ with the fix.
    let role = scram_role(&fresh_db).await;
    let dir = tempfile::tempdir().expect("dir");
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, TestCertificates::generate().expect("CA").ca_pem).expect("write");

    let output = Pgwi::new(&["doctor"])
        .database(&fresh_db, &role.name)
        .env("PGPASSWORD", &role.password)
        .env("PGWI_DATABASE__SSL_ROOT_CERT", other.display().to_string())
        .output()
        .await;

    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    let (found, fix) = line(&stdout, "tls");
    assert!(found.starts_with('✗'), "{stdout}");
    assert!(fix.contains("ssl_root_cert"), "{stdout}");
    assert!(
        line(&stdout, "authentication").0.starts_with('–'),
        "{stdout}"
    );
}

#[tokio::test]
async fn require_to_a_remote_host_is_an_sslmode_failure_with_the_fix() {
    // Proves: sslmode=require (the original demo's SSL_MODE) against a host that is not local is ✗ on its
    // own line, before any network check, naming the risk and the fix (verify-full); exit status 1.
    let output = Pgwi::new(&["doctor"])
        .env("DBHOST", "db.pgwi-test.invalid")
        .env("DBNAME", "app")
        .env("DBUSER", "app")
        .env("SSL_MODE", "require")
        .env("PGPASSWORD", "a-static-password")
        .output()
        .await;

    assert_eq!(output.status.code(), Some(1));
    let stdout = text(&output.stdout);
    let (found, fix) = line(&stdout, "sslmode");
    assert!(
        found.starts_with("✗ sslmode: database.sslmode is require against db.pgwi-test.invalid")
            && found.contains("take the token"),
        "{stdout}"
    );
    assert!(fix.contains("database.sslmode = verify-full"), "{stdout}");
    assert!(!stdout.contains("a-static-password"), "{stdout}");
}

#[rstest]
#[tokio::test]
async fn doctor_shows_every_source_of_autos_chain(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: credential.kind = auto on a CI runner with a service principal's variables: one `chain`
    // line per source — skipped ones with what they lack, ✓ for the one chosen, "not tried" after it — then
    // the chosen source's inputs and every later check ✓; --json carries the same lines.
    let db = fresh_db;
    let secret = pgwi_testsupport::entra::ClientSecret::generate(false);
    let mut options = pgwi_testsupport::entra::EntraOptions::for_server("unused", db.server());
    options.identity_name = format!("{}_sp", db.name());
    options.client_secrets = vec![secret.clone()];
    let identity = options.identity_name.clone();
    db.create_token_role(&identity).await.expect("token role");
    let entra = pgwi_testsupport::entra::EntraStandIn::start(options)
        .await
        .expect("Entra");
    let mut env = entra.service_principal_environment();
    env.push(("AZURE_CLIENT_SECRET".into(), secret.value.clone()));
    env.push((
        "SSL_CERT_FILE".into(),
        entra.ca_file().display().to_string(),
    ));

    let output = Pgwi::new(&["doctor"])
        .database(&db, &identity)
        .envs(env.clone())
        .output()
        .await;
    let json = Pgwi::new(&["doctor", "--json"])
        .database(&db, &identity)
        .envs(env)
        .output()
        .await;

    assert_success(&output);
    let stdout = text(&output.stdout);
    assert!(
        line(&stdout, "chain static-password")
            .0
            .starts_with("– chain static-password: skipped: PGPASSWORD is not set"),
        "{stdout}"
    );
    assert!(
        line(&stdout, "chain client-secret")
            .0
            .starts_with("✓ chain client-secret: chosen: ")
            && line(&stdout, "chain client-secret")
                .0
                .contains("AZURE_CLIENT_SECRET"),
        "{stdout}"
    );
    for skipped in [
        "client-certificate",
        "workload-identity",
        "az-cli",
        "azure-developer-cli",
    ] {
        assert!(
            line(&stdout, &format!("chain {skipped}"))
                .0
                .starts_with('–'),
            "{skipped}:\n{stdout}"
        );
    }
    assert!(
        line(&stdout, "chain managed-identity")
            .0
            .contains("not tried: client-secret came first"),
        "{stdout}"
    );
    for check in ["credential inputs", "token", "authentication", "privileges"] {
        assert!(
            line(&stdout, check).0.starts_with('✓'),
            "{check}:\n{stdout}"
        );
    }
    assert!(
        line(&stdout, "credential inputs")
            .0
            .contains("secret=variable AZURE_CLIENT_SECRET"),
        "{stdout}"
    );
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .filter(|n| n.starts_with("chain "))
        .collect();
    assert_eq!(names.len(), 7, "{names:?}");
}
