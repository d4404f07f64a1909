//! The runtime image, run as the CronJob runs it: non-root, read-only root filesystem, only the CronJob's
//! environment plus a password source, beside the test PostgreSQL container.

use pgwi_testsupport::TestDatabase;
use pgwi_testsupport::fixtures::fresh_db;
use rstest::rstest;

use crate::support::{demo_rows, inventory, runs, scram_role, text};

#[rstest]
#[ignore = "needs the runtime image named by PGWI_RUNTIME_IMAGE and the container backend; .ci/run builds the image and runs this"]
#[tokio::test]
async fn the_runtime_image_runs_the_job_like_the_cronjob(#[future(awt)] fresh_db: TestDatabase) {
    // Scenario: `docker run` of the image with the CronJob's security settings and environment, in the
    // PostgreSQL container's network namespace, writes the three rows over verify-full TLS.
    let image =
        std::env::var("PGWI_RUNTIME_IMAGE").expect("PGWI_RUNTIME_IMAGE names the image to test");
    let server = fresh_db.server();
    let container = server
        .container_id()
        .expect("run with PGWI_TEST_POSTGRES=container: the image joins the server's network");
    let role = scram_role(&fresh_db).await;
    let ca = server.ca_file().display().to_string();

    let args = [
        "run".to_owned(),
        "--rm".into(),
        "--read-only".into(),
        "--user".into(),
        "65532:65532".into(),
        "--cap-drop".into(),
        "ALL".into(),
        "--security-opt".into(),
        "no-new-privileges".into(),
        "--network".into(),
        format!("container:{container}"),
        "--volume".into(),
        format!("{ca}:/etc/pgwi/ca.crt:ro"),
        "--env".into(),
        // Never Azure's metadata address, whatever auto tries.
        format!(
            "AZURE_POD_IDENTITY_AUTHORITY_HOST={}",
            pgwi_testsupport::managed_identity::unreachable_imds_endpoint()
        ),
        "--env".into(),
        "DBHOST=127.0.0.1:5432".into(),
        "--env".into(),
        format!("DBNAME={}", fresh_db.name()),
        "--env".into(),
        format!("DBUSER={}", role.name),
        "--env".into(),
        "SSL_MODE=verify-full".into(),
        "--env".into(),
        "PGWI_DATABASE__SSL_ROOT_CERT=/etc/pgwi/ca.crt".into(),
        "--env".into(),
        format!("PGPASSWORD={}", role.password),
        image,
    ];
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("docker").args(&args).output()
    })
    .await
    .expect("join")
    .expect("docker");

    assert!(
        output.status.success(),
        "the image's job failed:\n{}",
        text(&output.stderr)
    );
    assert_eq!(inventory(&fresh_db).await, demo_rows());
    assert_eq!(
        runs(&fresh_db).await,
        vec![("succeeded".into(), 3, "static-password".into())]
    );
    assert!(
        text(&output.stderr)
            .lines()
            .any(|l| l.starts_with('{') && l.contains("run succeeded")),
        "JSON logs expected"
    );
}
