//! The TLS rules of `pgwi_core::tls_rules` end to end: the library's pool and the proxy against TLS
//! stand-ins serving chosen certificates, and the one warning at start for a credential sent to a server
//! that is not verified.

use std::path::PathBuf;

use pgwi_core::config::SslMode;
use pgwi_core::proxy::Proxy;
use pgwi_core::{Config, ConnectError, connect_with};
use pgwi_testsupport::logs::LogCapture;
use pgwi_testsupport::{TestCertificates, TlsStandIn};
use tokio::io::AsyncReadExt as _;

use crate::support::{start_session, static_password};

/// Words of the warning for a credential sent to a server that is not verified (`TlsRules::exposure`).
const EXPOSURE: &str = "anyone on the network path";

/// A configuration for `host:port` under `sslmode`, with `ca` as `database.ssl_root_cert`.
fn config(host: &str, port: u16, sslmode: SslMode, ca: Option<PathBuf>) -> Config {
    let mut config = Config::for_server(host, port, "app", "app");
    config.database.sslmode = sslmode;
    config.database.ssl_root_cert = ca;
    config.database.connect_timeout_secs = 1;
    config
}

/// `certs`' CA certificate written to a file in `dir`.
fn ca_file(dir: &tempfile::TempDir, certs: &TestCertificates) -> PathBuf {
    let path = dir.path().join(format!("ca-{}.pem", fastrand::u64(..)));
    std::fs::write(&path, &certs.ca_pem).expect("write CA");
    path
}

/// One client session through a proxy started with `config`: what the client received, as text.
async fn session_through_proxy(config: &Config) -> String {
    let proxy = Proxy::start(config, static_password("the-password"))
        .await
        .expect("proxy");
    let (mut client, served) = start_session(proxy).await;
    served.await.expect("the session ended");
    let mut received = Vec::new();
    let _ = client.read_to_end(&mut received).await;
    String::from_utf8_lossy(&received).into_owned()
}

#[tokio::test]
async fn the_proxys_verify_ca_with_a_ca_file_trusts_that_file_alone_and_not_the_name() {
    // Proves: with database.ssl_root_cert, the proxy's verify-ca refuses a certificate from another CA even
    // though it names the host, and accepts one from the file's CA that names another host (libpq's
    // verify-ca with a private CA).
    let dir = tempfile::tempdir().expect("dir");
    let ours = TestCertificates::generate_for(&["db.example.com"]).expect("our CA");
    let theirs = TestCertificates::generate().expect("another CA");
    let ours_file = ca_file(&dir, &ours);

    let other_name = TlsStandIn::start(&ours).await.expect("stand-in");
    let config_ours = config(
        "127.0.0.1",
        other_name.port(),
        SslMode::VerifyCa,
        Some(ours_file.clone()),
    );
    session_through_proxy(&config_ours).await;
    assert_eq!(
        other_name.handshakes(),
        1,
        "the file's CA with another name was refused"
    );

    let other_ca = TlsStandIn::start(&theirs).await.expect("stand-in");
    let config_theirs = config(
        "127.0.0.1",
        other_ca.port(),
        SslMode::VerifyCa,
        Some(ours_file),
    );
    let received = session_through_proxy(&config_theirs).await;
    assert_eq!(other_ca.handshakes(), 0, "another CA was trusted");
    assert!(received.contains("TLS"), "{received}");
}

#[tokio::test]
async fn the_pools_verify_ca_with_a_ca_file_also_checks_the_name() {
    // Proves: the pool (sqlx, which would add the public roots to the file and skip the name) applies
    // verify-ca with database.ssl_root_cert as verify-full with that file: another CA is refused even though
    // its certificate names the host, the file's CA is refused for another name, and accepted for the
    // right one.
    let dir = tempfile::tempdir().expect("dir");
    let ours = TestCertificates::generate_for(&["db.example.com"]).expect("our CA");
    let ours_file = ca_file(&dir, &ours);
    let theirs = TestCertificates::generate().expect("another CA");
    let right = TestCertificates::generate().expect("a CA for 127.0.0.1");
    let right_file = ca_file(&dir, &right);

    for (certs, file) in [(&theirs, &ours_file), (&ours, &ours_file)] {
        let server = TlsStandIn::start(certs).await.expect("stand-in");
        let config = config(
            "127.0.0.1",
            server.port(),
            SslMode::VerifyCa,
            Some(file.clone()),
        );
        let error = connect_with(&config, static_password("pw"))
            .await
            .expect_err("refused");
        assert!(
            matches!(
                error,
                ConnectError::Tls {
                    sslmode: SslMode::VerifyFull,
                    ..
                }
            ),
            "{error:?}"
        );
        assert_eq!(server.handshakes(), 0, "{error}");
    }

    let server = TlsStandIn::start(&right).await.expect("stand-in");
    let config = config(
        "127.0.0.1",
        server.port(),
        SslMode::VerifyCa,
        Some(right_file),
    );
    // The stand-in closes after the handshake: the pool then finds no PostgreSQL there.
    let error = connect_with(&config, static_password("pw"))
        .await
        .expect_err("no PostgreSQL behind the stand-in");
    assert!(server.handshakes() >= 1, "{error:?}");
}

#[tokio::test]
async fn verify_ca_without_a_ca_file_is_verify_full_and_says_so_once() {
    // Proves: verify-ca without database.ssl_root_cert (the public roots) is raised to verify-full, in the
    // pool (its TLS error reports verify-full) and in the proxy, each saying so once in the log; a
    // certificate from a CA outside the public roots is refused.
    let certs = TestCertificates::generate().expect("CA");
    let server = TlsStandIn::start(&certs).await.expect("stand-in");
    let config = config("127.0.0.1", server.port(), SslMode::VerifyCa, None);

    let logs = LogCapture::start();
    let error = connect_with(&config, static_password("pw"))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            error,
            ConnectError::Tls {
                sslmode: SslMode::VerifyFull,
                ..
            }
        ),
        "{error:?}"
    );
    let received = session_through_proxy(&config).await;
    assert!(received.contains("TLS"), "{received}");
    assert_eq!(server.handshakes(), 0);
    let text = logs.contents();
    assert_eq!(
        text.matches("is used as verify-full").count(),
        2,
        "once for the pool, once for the proxy:\n{text}"
    );
}

#[tokio::test]
async fn require_to_a_remote_host_is_warned_about_once_and_verify_full_or_loopback_not() {
    // Proves: the proxy and the pool started with sslmode=require against a host that is not local log one
    // warning each naming database.sslmode, the risk and verify-full (never the password); verify-full
    // there, and require to loopback or a Unix socket, log none.
    let remote = "db.pgwi-test.invalid";
    let logs = LogCapture::start();
    Proxy::start(
        &config(remote, 5432, SslMode::Require, None),
        static_password("the-password"),
    )
    .await
    .expect("the proxy starts without contacting the server");
    let proxy_logs = logs.contents();
    let warnings: Vec<&str> = proxy_logs
        .lines()
        .filter(|line| line.contains(EXPOSURE))
        .collect();
    assert_eq!(warnings.len(), 1, "{proxy_logs}");
    assert!(
        warnings[0].contains("WARN")
            && warnings[0].contains("database.sslmode")
            && warnings[0].contains("set database.sslmode = verify-full"),
        "{}",
        warnings[0]
    );
    drop(logs);

    let logs = LogCapture::start();
    let unreachable = connect_with(
        &config(remote, 5432, SslMode::Require, None),
        static_password("the-password"),
    )
    .await;
    assert!(unreachable.is_err());
    let pool_logs = logs.contents();
    assert_eq!(pool_logs.matches(EXPOSURE).count(), 1, "{pool_logs}");
    assert!(!pool_logs.contains("the-password"), "{pool_logs}");
    drop(logs);

    let logs = LogCapture::start();
    for (host, sslmode) in [
        (remote, SslMode::VerifyFull),
        ("127.0.0.1", SslMode::Require),
        ("localhost", SslMode::Require),
        ("/tmp", SslMode::Require),
    ] {
        Proxy::start(&config(host, 5432, sslmode, None), static_password("pw"))
            .await
            .expect("proxy");
    }
    let quiet = logs.contents();
    assert!(!quiet.contains(EXPOSURE), "{quiet}");
}
