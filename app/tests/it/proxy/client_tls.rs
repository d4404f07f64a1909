//! TLS on the client hop (`--tls-cert`/`--tls-key`): remote listeners require it and bind the local password
//! to the proxy's certificate (SCRAM-SHA-256-PLUS); local listeners offer it. Also the smaller limits a
//! client meets before it has authenticated, and what the health endpoint tells a non-loopback caller.

use super::*;

/// The bench's CA and a certificate for 127.0.0.1 from it, as files: (dir, CA, certificate, key).
fn certificate_files() -> (tempfile::TempDir, String, String, String) {
    let certs = pgwi_testsupport::TestCertificates::generate().expect("certificates");
    let dir = tempfile::tempdir().expect("dir");
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write");
        path.to_str().expect("UTF-8").to_owned()
    };
    let ca = write("ca.pem", &certs.ca_pem);
    let cert = write("proxy.pem", &certs.server_cert_pem);
    let key = write("proxy-key.pem", &certs.server_key_pem);
    (dir, ca, cert, key)
}

#[rstest]
#[tokio::test]
async fn remote_clients_need_tls_and_their_password_is_bound_to_the_proxy_certificate(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: with a certificate, a remote listener refuses a plaintext client (28000, saying how to
    // connect) and serves psql with sslmode=verify-full against the proxy's CA and channel_binding=require
    // (so the local password went over SCRAM-SHA-256-PLUS); the loopback listener still serves a plaintext
    // client and a TLS one; only one of --tls-cert/--tls-key exits 2 naming the other.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let (_dir, ca, cert, key) = certificate_files();
    let half = proxy(&db, &wi, &["--listen", "127.0.0.1:0"])
        .env("PGWI_PROXY__TLS_CERT_FILE", &cert)
        .output()
        .await;
    assert_eq!(half.status.code(), Some(2), "{}", text(&half.stderr));
    assert!(
        error_line(&half).contains("proxy.tls_key_file"),
        "{}",
        error_line(&half)
    );

    let password = pgwi_testsupport::random_alphanumeric(20);
    pgwi_testsupport::secrets::register(&password);
    let args = [
        "--listen",
        "0.0.0.0:0",
        "--listen",
        "127.0.0.1:0",
        "--allow-remote",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let pgwi = proxy(&db, &wi, &args)
        .env("PGWI_PROXY__LOCAL_PASSWORD_ENV", "LOCAL_PROXY_PASSWORD")
        .env("LOCAL_PROXY_PASSWORD", &password);
    let running = Running::start(pgwi, 2, false).await;
    let address = |prefix: &str| {
        let found = running.listening.iter().find(|a| a.starts_with(prefix));
        host_port(found.expect("a listener"))
    };
    let (remote_host, remote_port) = address("0.0.0.0:");
    let (local_host, local_port) = address("127.0.0.1:");

    let plaintext = [("PGPASSWORD", password.as_str()), ("PGSSLMODE", "disable")];
    let out = psql(
        &remote_host,
        remote_port,
        &wi.identity,
        db.name(),
        "SELECT 1",
        &plaintext,
    )
    .await;
    assert!(
        !out.status.success(),
        "a plaintext remote client was served"
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("TLS only") && stderr.contains("sslmode=verify-full"),
        "{stderr}"
    );

    let bound = [
        ("PGPASSWORD", password.as_str()),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca.as_str()),
        ("PGCHANNELBINDING", "require"),
    ];
    let sql = "SELECT 'bound'";
    let out = psql(
        &remote_host,
        remote_port,
        &wi.identity,
        db.name(),
        sql,
        &bound,
    )
    .await;
    assert_eq!(
        assert_ok("psql over TLS with channel binding", &out),
        "bound"
    );
    let wrong = [
        ("PGPASSWORD", "not-the-password"),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", ca.as_str()),
        ("PGCHANNELBINDING", "require"),
    ];
    let out = psql(
        &remote_host,
        remote_port,
        &wi.identity,
        db.name(),
        "SELECT 1",
        &wrong,
    )
    .await;
    assert!(
        !out.status.success(),
        "a wrong password was let in over TLS"
    );
    assert!(
        text(&out.stderr).contains("password authentication failed"),
        "{}",
        text(&out.stderr)
    );

    let local_plain = [("PGSSLMODE", "disable")];
    let out = psql(
        &local_host,
        local_port,
        &wi.identity,
        db.name(),
        "SELECT 'plain'",
        &local_plain,
    )
    .await;
    assert_eq!(assert_ok("loopback without TLS", &out), "plain");
    let local_tls = [("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())];
    let out = psql(
        &local_host,
        local_port,
        &wi.identity,
        db.name(),
        "SELECT 'tls'",
        &local_tls,
    )
    .await;
    assert_eq!(assert_ok("loopback with TLS", &out), "tls");
    running.stop().await;
}

#[rstest]
#[tokio::test]
async fn oversized_pre_authentication_messages_and_world_writable_socket_directories_are_refused(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: a remote client's SASL message above PostgreSQL's 64 KiB limit for clients that have not
    // authenticated gets 28P01 without the proxy reading it; a socket directory every user may write to
    // exits 2 naming proxy.listen and the fix; on a non-loopback address /healthz and /livez say only ok,
    // never the token's expiry or the session count.
    let db = fresh_db;
    let wi = WorkloadIdentity::start(&db).await;
    let open_dir = tempfile::tempdir().expect("dir");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(open_dir.path(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod");
    }
    let dir_arg = open_dir.path().to_str().expect("UTF-8");
    let refused = proxy(&db, &wi, &["--listen", dir_arg]).output().await;
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    let line = error_line(&refused);
    assert!(
        line.contains("proxy.listen") && line.contains("chmod o-w"),
        "{line}"
    );

    let password = pgwi_testsupport::random_alphanumeric(20);
    pgwi_testsupport::secrets::register(&password);
    let args = [
        "--listen",
        "0.0.0.0:0",
        "--allow-remote",
        "--healthz",
        "0.0.0.0:0",
    ];
    let pgwi = proxy(&db, &wi, &args)
        .env("PGWI_PROXY__LOCAL_PASSWORD_ENV", "LOCAL_PROXY_PASSWORD")
        .env("LOCAL_PROXY_PASSWORD", &password);
    let running = Running::start(pgwi, 1, true).await;
    let (host, port) = running.tcp();

    let mut stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .expect("connect");
    let startup = security::raw_startup(&[("user", wi.identity.as_str()), ("database", db.name())]);
    stream.write_all(&startup).await.expect("start-up");
    let mut head = [0_u8; 5];
    stream
        .read_exact(&mut head)
        .await
        .expect("the SASL request");
    assert_eq!(head[0], b'R');
    let len = i32::from_be_bytes(head[1..].try_into().expect("4 bytes"));
    let mut body = vec![0_u8; usize::try_from(len - 4).expect("a length")];
    stream
        .read_exact(&mut body)
        .await
        .expect("the SASL request's body");
    // A SASLInitialResponse claiming 100 000 bytes: refused on its length alone.
    let mut huge = vec![b'p'];
    huge.extend(100_000_i32.to_be_bytes());
    huge.extend(b"SCRAM-SHA-256\0");
    stream.write_all(&huge).await.expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(START_LIMIT, stream.read_to_end(&mut rest))
        .await
        .expect("the proxy kept the connection")
        .expect("read");
    let replies = security::parse_replies(&rest);
    let error = replies.iter().find(|r| r.tag == b'E').expect("an error");
    assert_eq!(error.field(b'C').as_deref(), Some("28P01"), "{replies:?}");

    let health = running.healthz.clone().expect("health address");
    let health = health.replace("0.0.0.0", "127.0.0.1");
    let (status, body) = healthz(&health).await;
    assert_eq!(status, 200);
    assert_eq!(body, "ok\n");
    let (status, body) = livez(&health).await;
    assert_eq!(status, 200);
    assert_eq!(body, "alive: listening\n");
    running.stop().await;
}
