//! One disposable, real PostgreSQL per test binary, and a fresh database per test.
//!
//! The server always runs with TLS (a certificate from a CA made for the run, so clients can use
//! `verify-full` against `127.0.0.1` or `localhost`) and password authentication: `scram-sha-256` for every
//! role, cleartext `password` for roles in the group [`CLEARTEXT_GROUP`], and for roles in [`TOKEN_GROUP`]
//! (made with [`TestDatabase::create_token_role`]) `pam`, where a checker judges the password as Azure judges
//! an Entra ID token: any unexpired token for the role, signed with [`TestPostgres::token_signing_key`], is
//! accepted, anything else refused, and every verdict is readable with [`TestPostgres::token_checks`] (see
//! `tokens.rs`). Connections without TLS are rejected. The one `trust` line is for roles in [`TRUSTED_GROUP`],
//! which stand for a role an attacker would aim at and exist only to prove that a proxy client cannot reach
//! them.
//!
//! `pg_hba.conf`'s `+group` also matches indirect members, and an administrator is often made a member of an
//! Entra principal's role (`GRANT identity TO admin`, as `pgwi admin bootstrap` does; PostgreSQL 16 even does
//! it implicitly for a `CREATEROLE` creator). So roles the bench makes with a password are in
//! [`CLEARTEXT_GROUP`] or [`SCRAM_GROUP`], whose lines come before the token line: they keep their password
//! whatever roles they are granted, as on Azure.
//!
//! Token checking needs a server the bench can give a PAM service: the container backend with an image built
//! with PAM, `pam_exec` and a checker (the local image is, with the compiled checker; see
//! `testsupport/images/postgres/build.sh`), or the native backend running as root (it writes
//! `/etc/pam.d/pgwi-test-token-<unique>` and removes it at exit).
//! Elsewhere token roles are refused with [`crate::TestSupportError::NoTokenChecks`] saying why.
//!
//! Backends, chosen by `PGWI_TEST_POSTGRES`:
//! - `container`: testcontainers-modules' Postgres, image from `PGWI_TEST_POSTGRES_IMAGE`
//!   (default [`DEFAULT_IMAGE`]);
//! - `native`: a throwaway cluster from the `initdb`/`postgres` binaries (`PGWI_TEST_POSTGRES_BIN`, else
//!   `/usr/lib/postgresql/<newest>/bin`, else `PATH`), started with `pgtemp`;
//! - `external`: an admin URL in `PGWI_TEST_DATABASE_URL` and its CA in `PGWI_TEST_DATABASE_CA_FILE`;
//! - `auto` (default): container when Docker answers and the image is present or can be pulled, else native.
//!
//! The server is started on a dedicated thread with its own runtime (containers and pools are tied to the
//! runtime that made them) and removed when the test binary exits.

mod container;
mod lifetime;
mod native;
mod tokens;

pub use tokens::TokenCheck;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sea_orm::sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sea_orm::sqlx::{self, ConnectOptions as _, Connection as _, PgPool};

use crate::{TestCertificates, TestSupportError, random_alphanumeric};

/// The image the `container` backend uses unless `PGWI_TEST_POSTGRES_IMAGE` names another.
pub const DEFAULT_IMAGE: &str = "postgres:16-alpine";
/// Roles in this group authenticate with cleartext `password` (over TLS), like Azure's Entra login.
pub const CLEARTEXT_GROUP: &str = "pgwi_cleartext";
/// Roles the bench makes with a SCRAM password are in this group, so they keep it even when granted a token
/// role (whose members `+pgwi_token` would otherwise send to the token checker).
pub const SCRAM_GROUP: &str = "pgwi_scram";
/// Roles in this group log in with Entra-style tokens, judged as Azure judges them (`pam` and the run's token
/// checker): any unexpired token for the role is accepted.
pub const TOKEN_GROUP: &str = "pgwi_token";
/// The one `trust` line of the bench: roles in this group log in over TLS without proving anything. They stand
/// for what an attacker would aim at (an Azure group role of the identity, or a role a server trusts), and
/// exist only so that tests can prove a client of the proxy can never pick the role it logs in as.
pub const TRUSTED_GROUP: &str = "pgwi_trusted";
/// The superuser the bench creates on servers it starts.
const ADMIN_USER: &str = "pgwi_admin";
/// The server's `max_connections`: the proxy's 200 concurrent clients plus the rest of a suite.
pub const MAX_CONNECTIONS: u32 = 300;

/// The `pg_hba.conf` every started server uses: TLS only, passwords only. With a PAM service, token roles are
/// judged by it, after the bench's own password roles (which may be members of token roles) and before
/// everything else.
pub(crate) fn pg_hba(pam_service: Option<&str>) -> String {
    let tokens = pam_service.map_or_else(String::new, |service| {
        format!("hostssl   all  +{TOKEN_GROUP}     all  pam pamservice={service}\n")
    });
    format!(
        "# pgwi test bench: TLS and passwords only; trust for the trusted group, which tests aim at.\n\
         local     all  all                  scram-sha-256\n\
         hostssl   all  +{CLEARTEXT_GROUP} all  password\n\
         hostssl   all  +{SCRAM_GROUP}     all  scram-sha-256\n\
         {tokens}\
         hostssl   all  +{TRUSTED_GROUP}   all  trust\n\
         hostssl   all  all             all  scram-sha-256\n\
         hostnossl all  all             all  reject\n"
    )
}

/// Which kind of server serves this test binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A container started by testcontainers.
    Container,
    /// A cluster started from local PostgreSQL binaries.
    Native,
    /// A server someone else runs.
    External,
}

/// What `PGWI_TEST_POSTGRES` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requested {
    /// Container if possible, else native.
    Auto,
    /// Exactly this backend, or fail.
    Only(Backend),
}

impl Requested {
    /// Parses the value of `PGWI_TEST_POSTGRES` (unset or empty means `auto`).
    pub fn parse(value: Option<&str>) -> Result<Self, TestSupportError> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(Self::Auto),
            Some("container") => Ok(Self::Only(Backend::Container)),
            Some("native") => Ok(Self::Only(Backend::Native)),
            Some("external") => Ok(Self::Only(Backend::External)),
            Some(other) => Err(TestSupportError::Config(format!(
                "PGWI_TEST_POSTGRES={other:?} is not a test PostgreSQL backend; \
                 use one of auto, container, native, external (or leave it unset for auto)"
            ))),
        }
    }
}

/// Where a started server listens and how its administrator logs in.
pub(crate) struct Started {
    admin: PgConnectOptions,
    how: String,
    keepalive: lifetime::Keepalive,
    /// The CA (PEM and file) of a server whose certificate the bench did not make.
    foreign_ca: Option<(String, PathBuf)>,
    /// The container's id, for the `container` backend.
    container_id: Option<String>,
    /// Whether token roles can log in, and where the checker logs.
    token_checking: tokens::TokenChecking,
    /// Files outside the run's temporary directory to remove when the server stops (the PAM service).
    remove_at_exit: Vec<PathBuf>,
    /// The Unix-socket directory clients on this machine can use, and the port in the socket's name.
    socket: Option<(PathBuf, u16)>,
}

/// The test binary's shared PostgreSQL server.
pub struct TestPostgres {
    backend: Backend,
    container_id: Option<String>,
    how: String,
    admin: PgConnectOptions,
    ca_pem: String,
    ca_file: PathBuf,
    token_key: Vec<u8>,
    token_checking: tokens::TokenChecking,
    socket: Option<(PathBuf, u16)>,
}

impl std::fmt::Debug for TestPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPostgres")
            .field("backend", &self.backend)
            .field("host", &self.host())
            .field("port", &self.port())
            .field("how", &self.how)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Result<TestPostgres, String>> = OnceLock::new();

impl TestPostgres {
    /// The server of this test binary, started on first call and removed when the process exits.
    pub fn shared() -> Result<&'static TestPostgres, TestSupportError> {
        SHARED
            .get_or_init(|| lifetime::start_shared().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| TestSupportError::NoPostgres(e.clone()))
    }

    /// Which backend serves the tests.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The container's id when the `container` backend serves the tests: other containers can join its
    /// network namespace (`--network container:<id>`) and reach the server at 127.0.0.1:5432.
    pub fn container_id(&self) -> Option<&str> {
        self.container_id.as_deref()
    }

    /// How the backend was chosen and started, for logs.
    pub fn description(&self) -> &str {
        &self.how
    }

    /// The host clients connect to (an IP address on this machine, covered by the server certificate).
    pub fn host(&self) -> &str {
        self.admin.get_host()
    }

    /// The server's TCP port.
    pub fn port(&self) -> u16 {
        self.admin.get_port()
    }

    /// The PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A file holding [`Self::ca_pem`], for programs configured with a path (`ssl_root_cert`).
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Options for the administrator, connected to `database`, with statement logging off (the bench's SQL
    /// carries passwords).
    pub fn admin_options(&self, database: &str) -> PgConnectOptions {
        self.admin
            .clone()
            .database(database)
            .log_statements(tracing::log::LevelFilter::Off)
    }

    /// Options for `user`/`password` on `database`, over TLS with `verify-full` against the run's CA.
    pub fn connect_options(&self, database: &str, user: &str, password: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host(self.host())
            .port(self.port())
            .database(database)
            .username(user)
            .password(password)
            .ssl_mode(PgSslMode::VerifyFull)
            .ssl_root_cert_from_pem(self.ca_pem.as_bytes().to_vec())
            .log_statements(tracing::log::LevelFilter::Off)
    }

    /// The run's random 32-byte HMAC-SHA256 key: tokens signed with it ([`crate::jwt::sign_compact`],
    /// or the Entra stand-in with [`crate::entra::EntraOptions::for_server`]) are the ones the server accepts.
    pub fn token_signing_key(&self) -> &[u8] {
        &self.token_key
    }

    /// Every token the server has judged so far, oldest first, from the checker's log (which never holds a
    /// token). The server is shared by the test binary: filter by [`TokenCheck::user`].
    pub fn token_checks(&self) -> Result<Vec<TokenCheck>, TestSupportError> {
        self.token_checking.read()
    }

    /// The server's Unix-socket directory as a client on this machine reaches it (libpq's `host=/dir`), and
    /// the port in the socket's name (`.s.PGSQL.<port>`, the server's own port: for a container, 5432).
    /// `None` for an external server.
    pub fn unix_socket(&self) -> Option<(&Path, u16)> {
        self.socket
            .as_ref()
            .map(|(dir, port)| (dir.as_path(), *port))
    }

    /// The tokens `user` presented, oldest first.
    pub fn token_checks_for(&self, user: &str) -> Result<Vec<TokenCheck>, TestSupportError> {
        let mut checks = self.token_checks()?;
        checks.retain(|check| check.user == user);
        Ok(checks)
    }

    /// Creates a database for one test and returns it with an admin pool connected to it.
    pub async fn fresh_database(&'static self) -> Result<TestDatabase, TestSupportError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "pgwi_t{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_alphanumeric(6).to_lowercase()
        );
        let mut maintenance = sqlx::PgConnection::connect_with(&self.admin_options("postgres"))
            .await
            .map_err(TestSupportError::sql(
                "connecting to the test server as admin",
            ))?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_ident(&name)
        )))
        .execute(&mut maintenance)
        .await
        .map_err(TestSupportError::sql(format!(
            "creating test database {name}"
        )))?;
        let admin = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(self.admin_options(&name))
            .await
            .map_err(TestSupportError::sql(format!(
                "connecting to test database {name}"
            )))?;
        Ok(TestDatabase {
            server: self,
            name,
            admin,
        })
    }

    /// Finishes a freshly started server: waits until the admin can log in over verified TLS, then creates
    /// the roles the bench relies on.
    async fn prepare(
        backend: Backend,
        started: Started,
        ca_pem: String,
        ca_file: PathBuf,
        token_key: Vec<u8>,
    ) -> Result<(Self, lifetime::Keepalive), TestSupportError> {
        let (ca_pem, ca_file) = started.foreign_ca.unwrap_or((ca_pem, ca_file));
        let server = Self {
            backend,
            container_id: started.container_id,
            how: started.how,
            admin: started.admin,
            ca_pem,
            ca_file,
            token_key,
            token_checking: started.token_checking,
            socket: started.socket,
        };
        let mut conn = server.wait_until_ready(Duration::from_secs(60)).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DO $$ BEGIN
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{CLEARTEXT_GROUP}') THEN
                 CREATE ROLE {CLEARTEXT_GROUP} NOLOGIN;
               END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{SCRAM_GROUP}') THEN
                 CREATE ROLE {SCRAM_GROUP} NOLOGIN;
               END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TOKEN_GROUP}') THEN
                 CREATE ROLE {TOKEN_GROUP} NOLOGIN;
               END IF;
               IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{TRUSTED_GROUP}') THEN
                 CREATE ROLE {TRUSTED_GROUP} NOLOGIN;
               END IF;
             END $$"
        )))
        .execute(&mut conn)
        .await
        .map_err(TestSupportError::sql(
            "creating the bench's group roles (cleartext, scram, token, trusted)",
        ))?;
        Ok((server, started.keepalive))
    }

    async fn wait_until_ready(
        &self,
        limit: Duration,
    ) -> Result<sqlx::PgConnection, TestSupportError> {
        let deadline = Instant::now() + limit;
        let options = self.admin_options("postgres");
        loop {
            match sqlx::PgConnection::connect_with(&options).await {
                Ok(conn) => return Ok(conn),
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "test PostgreSQL not ready yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => {
                    return Err(TestSupportError::sql(format!(
                        "the test PostgreSQL ({}) did not accept the admin over verify-full TLS within {}s",
                        self.how,
                        limit.as_secs()
                    ))(e));
                }
            }
        }
    }
}

/// How a test role proves its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordAuth {
    /// SCRAM-SHA-256, PostgreSQL's default.
    Scram,
    /// Cleartext `password` over TLS, as Azure Database for PostgreSQL asks of Entra tokens.
    Cleartext,
}

/// A login role made for one test.
#[derive(Clone)]
pub struct TestRole {
    /// The role's name.
    pub name: String,
    /// Its current password.
    pub password: String,
}

impl std::fmt::Debug for TestRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRole")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A database that belongs to one test.
pub struct TestDatabase {
    server: &'static TestPostgres,
    name: String,
    admin: PgPool,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("name", &self.name)
            .field("server", &self.server)
            .finish()
    }
}

impl TestDatabase {
    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server it lives on.
    pub fn server(&self) -> &'static TestPostgres {
        self.server
    }

    /// A superuser pool connected to this database, for fixtures and `ALTER ROLE`.
    pub fn admin(&self) -> &PgPool {
        &self.admin
    }

    /// Options for `user`/`password` on this database over `verify-full` TLS.
    pub fn connect_options(&self, user: &str, password: &str) -> PgConnectOptions {
        self.server.connect_options(&self.name, user, password)
    }

    /// Creates a login role with a random password that may use this database and create in its `public`
    /// schema. Role names are unique across the server.
    pub async fn create_role(&self, auth: PasswordAuth) -> Result<TestRole, TestSupportError> {
        let role = TestRole {
            name: format!("{}_r{}", self.name, random_alphanumeric(4).to_lowercase()),
            password: random_alphanumeric(24),
        };
        self.create_named_role(&role.name, &role.password, auth)
            .await?;
        Ok(role)
    }

    /// Creates a login role with the given name and password (names are server-wide: pick unique ones), in
    /// [`SCRAM_GROUP`] or [`CLEARTEXT_GROUP`] by `auth`.
    pub async fn create_named_role(
        &self,
        name: &str,
        password: &str,
        auth: PasswordAuth,
    ) -> Result<(), TestSupportError> {
        crate::secrets::register(password);
        let ident = quote_ident(name);
        let mut sql = format!(
            "CREATE ROLE {ident} LOGIN PASSWORD {};
             GRANT ALL ON DATABASE {} TO {ident};
             GRANT ALL ON SCHEMA public TO {ident};",
            quote_literal(password),
            quote_ident(&self.name)
        );
        let group = match auth {
            PasswordAuth::Scram => SCRAM_GROUP,
            PasswordAuth::Cleartext => CLEARTEXT_GROUP,
        };
        sql.push_str(&format!("GRANT {group} TO {ident};"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.admin)
            .await
            .map_err(TestSupportError::sql(format!("creating test role {name}")))?;
        Ok(())
    }

    /// Creates a login role that authenticates with Entra-style tokens, as an Entra principal on Azure: member
    /// of [`TOKEN_GROUP`], no password, allowed to use this database and create in its `public` schema. Any
    /// unexpired token for `name` signed with the server's key logs in (names are server-wide: pick unique
    /// ones). Fails with [`TestSupportError::NoTokenChecks`] when the server cannot check tokens.
    pub async fn create_token_role(&self, name: &str) -> Result<(), TestSupportError> {
        self.server.token_checking.available()?;
        let ident = quote_ident(name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {ident} LOGIN IN ROLE {TOKEN_GROUP};
             GRANT ALL ON DATABASE {} TO {ident};
             GRANT ALL ON SCHEMA public TO {ident};",
            quote_ident(&self.name)
        )))
        .execute(&self.admin)
        .await
        .map_err(TestSupportError::sql(format!("creating token role {name}")))?;
        Ok(())
    }

    /// Creates a login role in [`TRUSTED_GROUP`], which the server lets in over TLS without a password or a
    /// token (names are server-wide: pick unique ones). Only for proving that nothing lets a client reach it.
    pub async fn create_trusted_role(&self, name: &str) -> Result<(), TestSupportError> {
        let ident = quote_ident(name);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {ident} LOGIN IN ROLE {TRUSTED_GROUP};
             GRANT ALL ON DATABASE {} TO {ident};",
            quote_ident(&self.name)
        )))
        .execute(&self.admin)
        .await
        .map_err(TestSupportError::sql(format!(
            "creating trusted role {name}"
        )))?;
        Ok(())
    }

    /// Creates the role, or sets its password if it exists.
    pub async fn ensure_role(
        &self,
        name: &str,
        password: &str,
        auth: PasswordAuth,
    ) -> Result<(), TestSupportError> {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT FROM pg_roles WHERE rolname = $1)")
                .bind(name)
                .fetch_one(&self.admin)
                .await
                .map_err(TestSupportError::sql(format!("looking up role {name}")))?;
        if exists {
            self.set_password(name, password).await
        } else {
            self.create_named_role(name, password, auth).await
        }
    }

    /// Installs a stand-in for Azure's `pgaadauth_create_principal_with_oid` into this database. Vanilla
    /// PostgreSQL has no `pgaadauth` extension; this function of the same name and signature creates a login
    /// role in [`TOKEN_GROUP`] (an Entra principal: it logs in with tokens, as with
    /// [`Self::create_token_role`]) and records the object id and type in the role's comment, so the
    /// bootstrap's SQL path runs unchanged.
    pub async fn install_pgaadauth_stand_in(&self) -> Result<(), TestSupportError> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE OR REPLACE FUNCTION pgaadauth_create_principal_with_oid(
                 rolename text, objectid text, objecttype text, isadmin boolean, ismfa boolean)
             RETURNS text LANGUAGE plpgsql AS $$
             BEGIN
               EXECUTE format('CREATE ROLE %I LOGIN IN ROLE {TOKEN_GROUP}', rolename);
               EXECUTE format('COMMENT ON ROLE %I IS %L', rolename, 'aad:' || objecttype || ':' || objectid);
               RETURN 'Created role for ' || rolename;
             END $$;"
        )))
        .execute(&self.admin)
        .await
        .map_err(TestSupportError::sql("installing the pgaadauth stand-in"))?;
        Ok(())
    }

    /// Changes a role's password, as Azure does when a new token becomes valid.
    pub async fn set_password(&self, role: &str, password: &str) -> Result<(), TestSupportError> {
        crate::secrets::register(password);
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "ALTER ROLE {} PASSWORD {}",
            quote_ident(role),
            quote_literal(password)
        )))
        .execute(&self.admin)
        .await
        .map_err(TestSupportError::sql(format!(
            "changing the password of {role}"
        )))?;
        Ok(())
    }
}

/// The administrator's options for a server the bench started on 127.0.0.1:`port`, verify-full against
/// the run's CA.
pub(crate) fn local_admin_options(
    port: u16,
    password: &str,
    certs: &TestCertificates,
) -> PgConnectOptions {
    PgConnectOptions::new_without_pgpass()
        .host("127.0.0.1")
        .port(port)
        .username(ADMIN_USER)
        .password(password)
        .ssl_mode(PgSslMode::VerifyFull)
        .ssl_root_cert_from_pem(certs.ca_pem.as_bytes().to_vec())
}

/// Quotes an SQL identifier.
pub fn quote_ident(ident: &str) -> String {
    use sea_orm::sea_query::{Alias, IntoIden as _, PostgresQueryBuilder, QuotedBuilder as _};
    // sea-query's own quoting, as in every statement SeaORM builds (an owned name is escaped).
    let mut quoted = String::new();
    PostgresQueryBuilder.prepare_iden(&Alias::new(ident).into_iden(), &mut quoted);
    quoted
}

/// Quotes an SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Writes the server's TLS material and `pg_hba.conf` (token roles judged by `pam_service`, if any) into `dir`
/// and returns their paths (certificate, key, hba file).
pub(crate) fn write_server_files(
    certs: &TestCertificates,
    dir: &Path,
    pam_service: Option<&str>,
) -> Result<ServerFiles, TestSupportError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)
        .map_err(TestSupportError::io(format!("creating {}", dir.display())))?;
    let write = |name: &str, contents: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, contents)
            .and_then(|()| std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)))
            .map_err(TestSupportError::io(format!("writing {}", path.display())))?;
        Ok::<_, TestSupportError>(path)
    };
    Ok(ServerFiles {
        cert: write("server.crt", &certs.server_cert_pem, 0o644)?,
        key: write("server.key", &certs.server_key_pem, 0o600)?,
        hba: write("pg_hba.conf", &pg_hba(pam_service), 0o644)?,
    })
}

/// The files a native server is configured with.
pub(crate) struct ServerFiles {
    /// `ssl_cert_file`.
    pub cert: PathBuf,
    /// `ssl_key_file`, readable by its owner only.
    pub key: PathBuf,
    /// `hba_file`.
    pub hba: PathBuf,
}

/// Prints, past the test harness's capture, that `server` served a test: CI's log shows which backend
/// really authenticated a client.
pub fn announce_served(server: &TestPostgres, what: &str) {
    crate::announce(&format!(
        "[{:?} {}:{}] {what}",
        server.backend(),
        server.host(),
        server.port()
    ));
}
