//! The `native` backend: a throwaway cluster from local PostgreSQL binaries, started with `pgtemp`.
//!
//! PostgreSQL refuses to run as root, so as root pgtemp runs `initdb` and `postgres` through
//! `sudo -u postgres`; we check for both before starting and turn pgtemp's panics into a clear error.

use std::path::{Path, PathBuf};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgSslMode};

use super::{ADMIN_USER, Started, lifetime::Keepalive, write_server_files};
use crate::{TestCertificates, TestSupportError, random_alphanumeric};

const INSTALL_HINT: &str = "install PostgreSQL's server binaries (`apt-get install postgresql`) or set \
                            PGWI_TEST_POSTGRES_BIN to the folder holding `initdb` and `postgres`";

/// Finds the folder with `initdb` and `postgres`: `PGWI_TEST_POSTGRES_BIN`, else the newest
/// `/usr/lib/postgresql/<version>/bin`, else the first `PATH` entry that has both.
fn find_bin_dir() -> Result<PathBuf, TestSupportError> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Ok(dir) = std::env::var("PGWI_TEST_POSTGRES_BIN") {
        let dir = PathBuf::from(dir);
        return if has_both(&dir) {
            Ok(dir)
        } else {
            Err(TestSupportError::NoPostgres(format!(
                "PGWI_TEST_POSTGRES_BIN={} has no `initdb` and `postgres`; {INSTALL_HINT}",
                dir.display()
            )))
        };
    }
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versioned.sort();
    if let Some((_, dir)) = versioned.pop() {
        return Ok(dir);
    }
    std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|dir| has_both(dir)))
        .ok_or_else(|| {
            TestSupportError::NoPostgres(format!(
                "no `initdb`/`postgres` under /usr/lib/postgresql/*/bin or on PATH; {INSTALL_HINT}"
            ))
        })
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

fn running_as_root() -> Result<bool, TestSupportError> {
    let out = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map_err(TestSupportError::io("running `id -u`"))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim() == "0")
}

/// As root, the server runs as `postgres`: check that it can, and give it its key.
fn prepare_for_root(key: &Path) -> Result<(), TestSupportError> {
    if !on_path("sudo") {
        return Err(TestSupportError::NoPostgres(
            "running as root, the native backend starts PostgreSQL as the `postgres` user through `sudo`, \
             which is not installed; `apt-get install sudo`, or run the tests as a normal user"
                .into(),
        ));
    }
    let chown = std::process::Command::new("chown")
        .arg("postgres:")
        .arg(key)
        .output()
        .map_err(TestSupportError::io("running chown"))?;
    if !chown.status.success() {
        return Err(TestSupportError::NoPostgres(format!(
            "running as root, the server key must belong to the `postgres` user, but chown failed: {}; \
             install PostgreSQL (which creates that user) or run the tests as a normal user",
            String::from_utf8_lossy(&chown.stderr).trim()
        )));
    }
    Ok(())
}

pub(crate) fn start(certs: &TestCertificates, workdir: &Path) -> Result<Started, TestSupportError> {
    let bin = find_bin_dir()?;
    let (cert, key, hba) = write_server_files(certs, &workdir.join("tls"))?;
    if running_as_root()? {
        prepare_for_root(&key)?;
    }
    let password = random_alphanumeric(24);
    let path = |p: &Path| p.display().to_string();
    let builder = pgtemp::PgTempDB::builder()
        .with_bin_path(&bin)
        .with_data_dir_prefix(workdir)
        .with_username(ADMIN_USER)
        .with_password(&password)
        .with_dbname("postgres")
        .with_initdb_arg("auth", "scram-sha-256")
        .with_config_param("listen_addresses", "127.0.0.1")
        .with_config_param("ssl", "on")
        .with_config_param("ssl_cert_file", &path(&cert))
        .with_config_param("ssl_key_file", &path(&key))
        .with_config_param("hba_file", &path(&hba))
        // pgtemp pipes the server's output and never reads it: send the log to files instead.
        .with_config_param("logging_collector", "on");
    let cluster = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| builder.start()))
        .map_err(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown failure");
            TestSupportError::NoPostgres(format!(
                "starting PostgreSQL from {} failed: {message}; {INSTALL_HINT}",
                bin.display()
            ))
        })?;
    let admin = PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(cluster.db_port())
        .username(ADMIN_USER)
        .password(&password)
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert_from_pem(certs.ca_pem.as_bytes().to_vec());
    Ok(Started {
        admin,
        how: format!("pgtemp cluster from {}", bin.display()),
        keepalive: Keepalive::Native(Box::new(cluster)),
        foreign_ca: None,
    })
}
