//! The `container` backend: testcontainers-modules' Postgres with TLS and the bench's `pg_hba.conf`.
//!
//! Works with the official image and with the locally built one (`testsupport/images/postgres/`), because
//! both run `/docker-entrypoint-initdb.d/*.sh` at first start: our script moves the certificate into the data
//! directory (the key must be owned by the server's user) and turns TLS on before the final server starts.
//!
//! Token roles: the run's checker configuration (and its Perl checker) and two PAM services are copied in:
//! `/etc/pam.d/pgwi-test-token` runs the image's compiled checker (`/usr/local/bin/pgwi-token-check`, which
//! the local image has), `pgwi-test-token-perl` the Perl one. The init script installs the run's files under
//! `/var/lib/postgresql/pgwi-token/` (owned by the server's user, who runs the checker and writes its log
//! there) and points `pg_hba.conf` at the compiled checker, or at the Perl one in an image without it. When
//! the image cannot check tokens at all (PostgreSQL without PAM, no `pam_exec.so`, neither checker: e.g. an
//! Alpine image), it drops the token line from `pg_hba.conf` and records why, and token roles are refused
//! with that reason. [`super::TestPostgres::token_checks`] reads the log with `docker exec … cat`.

use std::time::Duration;

use testcontainers::core::ExecCommand;
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerAsync, CopyTargetOptions};
use testcontainers::{ContainerRequest, ImageExt as _};
use testcontainers_modules::postgres::Postgres;

use super::tokens::{self, TokenChecking};
use super::{ADMIN_USER, DEFAULT_IMAGE, Started, lifetime::Keepalive, local_admin_options, pg_hba};
use crate::{TestCertificates, TestSupportError, random_alphanumeric};

/// The PAM service token roles use inside the container (the compiled checker); the init script switches
/// `pg_hba.conf` to [`PERL_PAM_SERVICE`] in an image without it.
const PAM_SERVICE: &str = "pgwi-test-token";
const PERL_PAM_SERVICE: &str = "pgwi-test-token-perl";
/// The installed Perl checker, the compiled checker's configuration, the log, and the note saying why token
/// roles cannot log in (when they cannot).
const CHECKER: &str = "/var/lib/postgresql/pgwi-token/check";
const CHECKER_CONFIG: &str = "/var/lib/postgresql/pgwi-token/config";
const CHECK_LOG: &str = "/var/lib/postgresql/pgwi-token/checks.log";
const UNAVAILABLE: &str = "/var/lib/postgresql/pgwi-token/unavailable";

const INIT_SCRIPT: &str = r#"#!/bin/sh
# pgwi test bench: TLS on, passwords only. Runs once, as the server's user, before the final start.
set -eu
cp /pgwi-tls/server.crt /pgwi-tls/server.key "$PGDATA/"
chmod 600 "$PGDATA/server.key"
cat >> "$PGDATA/postgresql.conf" <<'CONF'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
CONF

# Token roles: install the checker where only the server's user reads it (it holds the run's key), or drop
# their pg_hba.conf line and note why the image cannot check tokens.
tokens=/var/lib/postgresql/pgwi-token
mkdir -p "$tokens"
chmod 700 "$tokens"
: > "$tokens/checks.log"
chmod 600 "$tokens/checks.log"
cp /pgwi-tls/token-check "$tokens/check"
cp /pgwi-tls/token-config "$tokens/config"
chmod 600 "$tokens/check" "$tokens/config"
compiled=/usr/local/bin/pgwi-token-check
service=pgwi-test-token
why=""
server="$(command -v postgres || true)"
pam_exec=""
for f in /lib/security/pam_exec.so /lib/*/security/pam_exec.so /usr/lib/security/pam_exec.so /usr/lib/*/security/pam_exec.so; do
  if [ -e "$f" ]; then pam_exec="$f"; fi
done
if [ -z "$server" ] || ! grep -q libpam.so "$server"; then
  why="its PostgreSQL is built without PAM"
elif [ -z "$pam_exec" ]; then
  why="it has no pam_exec.so (libpam-modules)"
elif [ -x "$compiled" ] && "$compiled" --check "$tokens/config" >/dev/null 2>&1; then
  echo "token roles: judged by $compiled"
elif /usr/bin/perl -c "$tokens/check" >/dev/null 2>&1; then
  service=pgwi-test-token-perl
  echo "token roles: judged by the Perl checker (this image has no $compiled)"
else
  why="it has neither $compiled nor /usr/bin/perl with Digest::SHA, JSON::PP and MIME::Base64"
fi
if [ -z "$why" ] && [ ! -r "/etc/pam.d/$service" ]; then
  why="/etc/pam.d/$service was not copied in"
fi
if [ -n "$why" ]; then
  printf '%s
' "$why" > "$tokens/unavailable"
  grep -v '+pgwi_token' /pgwi-tls/pg_hba.conf > "$PGDATA/pg_hba.conf"
else
  sed "s/pamservice=pgwi-test-token\$/pamservice=$service/" /pgwi-tls/pg_hba.conf > "$PGDATA/pg_hba.conf"
fi
"#;

/// The image to run: `PGWI_TEST_POSTGRES_IMAGE`, else [`DEFAULT_IMAGE`].
pub(crate) fn image_name() -> String {
    std::env::var("PGWI_TEST_POSTGRES_IMAGE")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_owned())
}

/// Splits `repo[:tag]` (the repository may hold a registry's `host:port/`).
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => (repo, tag),
        _ => (image, "latest"),
    }
}

/// The container request, without starting it.
fn request(
    certs: &TestCertificates,
    image: &str,
    password: &str,
    checker: String,
    checker_config: String,
) -> ContainerRequest<Postgres> {
    let (repo, tag) = split_image(image);
    let file = |path: &str, mode: u32| CopyTargetOptions::new(path).with_mode(mode);
    Postgres::default()
        .with_user(ADMIN_USER)
        .with_password(password)
        .with_db_name("postgres")
        .with_name(repo)
        .with_tag(tag)
        .with_label("org.pgwi.testsupport", "postgres")
        .with_copy_to(
            file("/docker-entrypoint-initdb.d/50-pgwi-tls.sh", 0o755),
            INIT_SCRIPT.as_bytes().to_vec(),
        )
        .with_copy_to(
            file("/pgwi-tls/server.crt", 0o644),
            certs.server_cert_pem.clone().into_bytes(),
        )
        .with_copy_to(
            file("/pgwi-tls/server.key", 0o644),
            certs.server_key_pem.clone().into_bytes(),
        )
        .with_copy_to(
            file("/pgwi-tls/pg_hba.conf", 0o644),
            pg_hba(Some(PAM_SERVICE)).into_bytes(),
        )
        // Readable by the init script (it runs as the server's user); it installs a private copy.
        .with_copy_to(file("/pgwi-tls/token-check", 0o644), checker.into_bytes())
        .with_copy_to(
            file("/pgwi-tls/token-config", 0o644),
            checker_config.into_bytes(),
        )
        .with_copy_to(
            file(&format!("/etc/pam.d/{PAM_SERVICE}"), 0o644),
            tokens::compiled_pam_service_file(tokens::COMPILED_CHECKER_IN_IMAGE, CHECKER_CONFIG)
                .into_bytes(),
        )
        .with_copy_to(
            file(&format!("/etc/pam.d/{PERL_PAM_SERVICE}"), 0o644),
            tokens::pam_service_file(CHECKER).into_bytes(),
        )
        // The image's own `-c fsync=off`, plus room for the proxy's 200 concurrent clients next to the suite.
        .with_cmd([
            "-c".to_owned(),
            "fsync=off".to_owned(),
            "-c".to_owned(),
            format!("max_connections={}", super::MAX_CONNECTIONS),
        ])
        .with_startup_timeout(Duration::from_secs(120))
}

pub(crate) async fn start(
    certs: &TestCertificates,
    workdir: &std::path::Path,
    token_key: &[u8],
) -> Result<Started, TestSupportError> {
    let image = image_name();
    // The server's socket directory, shared with this machine: clients here can connect over the Unix
    // socket too. World-writable, as the server's user inside the container is not ours.
    let socket_dir = workdir.join("socket");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(&socket_dir)
            .and_then(|()| {
                std::fs::set_permissions(&socket_dir, std::fs::Permissions::from_mode(0o777))
            })
            .map_err(TestSupportError::io("creating the shared socket directory"))?;
    }
    let password = random_alphanumeric(24);
    crate::secrets::register(&password);
    let checker = tokens::checker_script(token_key, CHECK_LOG)?;
    let checker_config = tokens::checker_config(token_key, CHECK_LOG)?;
    let container = request(certs, &image, &password, checker, checker_config)
        .with_mount(testcontainers::core::Mount::bind_mount(
            socket_dir.display().to_string(),
            "/var/run/postgresql",
        ))
        .start()
        .await
        .map_err(|e| TestSupportError::NoPostgres(format!("starting container {image}: {e}")))?;
    let port = container.get_host_port_ipv4(5432).await.map_err(|e| {
        TestSupportError::NoPostgres(format!("reading the port of container {image}: {e}"))
    })?;
    let admin = local_admin_options(port, &password, certs);
    let token_checking = token_checking(&container, &image).await;
    Ok(Started {
        admin,
        how: format!(
            "testcontainers, image {image}, container {}",
            container.id()
        ),
        socket: Some((socket_dir, 5432)),
        container_id: Some(container.id().to_owned()),
        keepalive: Keepalive::Container(Box::new(container)),
        foreign_ca: None,
        token_checking,
        remove_at_exit: Vec::new(),
    })
}

/// Whether the init script found the image able to check tokens.
async fn token_checking(container: &ContainerAsync<Postgres>, image: &str) -> TokenChecking {
    let unavailable = |why: &str| {
        TokenChecking::Unavailable(format!(
            "the container image {image} cannot check tokens: {why}; build the local image \
             (`bash testsupport/images/postgres/build.sh pgwi-test-postgres:15-pam2`) and set \
             PGWI_TEST_POSTGRES_IMAGE=pgwi-test-postgres:15-pam2"
        ))
    };
    let note = format!("cat {UNAVAILABLE} 2>/dev/null; true");
    let why = match container
        .exec(ExecCommand::new(["sh", "-c", note.as_str()]))
        .await
    {
        Ok(mut result) => match result.stdout_to_vec().await {
            Ok(out) => String::from_utf8_lossy(&out).trim().to_owned(),
            Err(e) => format!("reading {UNAVAILABLE} failed: {e}"),
        },
        Err(e) => format!("reading {UNAVAILABLE} failed: {e}"),
    };
    if why.is_empty() {
        TokenChecking::Container {
            id: container.id().to_owned(),
            log: CHECK_LOG.to_owned(),
        }
    } else {
        unavailable(&why)
    }
}

#[cfg(test)]
mod tests {
    use super::split_image;

    #[test]
    fn image_names_split_into_repository_and_tag() {
        // Scenario: image references with and without tag, and with a registry port, split correctly.
        assert_eq!(split_image("postgres:16-alpine"), ("postgres", "16-alpine"));
        assert_eq!(
            split_image("pgwi-test-postgres"),
            ("pgwi-test-postgres", "latest")
        );
        assert_eq!(
            split_image("localhost:5000/pg"),
            ("localhost:5000/pg", "latest")
        );
        assert_eq!(
            split_image("localhost:5000/pg:15"),
            ("localhost:5000/pg", "15")
        );
    }
}
