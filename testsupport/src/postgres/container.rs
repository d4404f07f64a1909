//! The `container` backend: testcontainers-modules' Postgres with TLS and the bench's `pg_hba.conf`.
//!
//! Works with the official image and with the locally built one (`testsupport/images/postgres/`), because
//! both run `/docker-entrypoint-initdb.d/*.sh` at first start: our script moves the certificate into the data
//! directory (the key must be owned by the server's user) and turns TLS on before the final server starts.

use std::time::Duration;

use testcontainers::CopyTargetOptions;
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{ContainerRequest, ImageExt as _};
use testcontainers_modules::postgres::Postgres;

use super::{ADMIN_USER, DEFAULT_IMAGE, PG_HBA, Started, lifetime::Keepalive, local_admin_options};
use crate::{TestCertificates, TestSupportError, random_alphanumeric};

const INIT_SCRIPT: &str = r#"#!/bin/sh
# pgwi test bench: TLS on, passwords only. Runs once, as the server's user, before the final start.
set -eu
cp /pgwi-tls/server.crt /pgwi-tls/server.key "$PGDATA/"
chmod 600 "$PGDATA/server.key"
cp /pgwi-tls/pg_hba.conf "$PGDATA/pg_hba.conf"
cat >> "$PGDATA/postgresql.conf" <<'CONF'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
CONF
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
fn request(certs: &TestCertificates, image: &str, password: &str) -> ContainerRequest<Postgres> {
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
            PG_HBA.as_bytes().to_vec(),
        )
        .with_startup_timeout(Duration::from_secs(120))
}

pub(crate) async fn start(certs: &TestCertificates) -> Result<Started, TestSupportError> {
    let image = image_name();
    let password = random_alphanumeric(24);
    let container = request(certs, &image, &password)
        .start()
        .await
        .map_err(|e| TestSupportError::NoPostgres(format!("starting container {image}: {e}")))?;
    let port = container.get_host_port_ipv4(5432).await.map_err(|e| {
        TestSupportError::NoPostgres(format!("reading the port of container {image}: {e}"))
    })?;
    let admin = local_admin_options(port, &password, certs);
    Ok(Started {
        admin,
        how: format!(
            "testcontainers, image {image}, container {}",
            container.id()
        ),
        container_id: Some(container.id().to_owned()),
        keepalive: Keepalive::Container(Box::new(container)),
        foreign_ca: None,
    })
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
