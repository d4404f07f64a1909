//! Starting the shared server on its own thread and removing it when the test binary exits.
//!
//! libtest never drops statics, so a container or cluster kept in one would outlive the process. The server
//! lives on a dedicated thread with its own runtime; an `atexit` handler asks that thread to stop the server
//! and waits (bounded) for it to finish, then removes the files the backend left outside the run's temporary
//! directory (the native backend's PAM service for token roles).
//!
//! The run's token-signing key (32 random bytes) is made here, before the backend starts, because the token
//! checker the backend installs embeds it.

use std::sync::Mutex;
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

use testcontainers::ContainerAsync;
use testcontainers_modules::postgres::Postgres;

use super::{Backend, Requested, Started, TestPostgres, container, native, tokens};
use crate::{TestCertificates, TestSupportError, announce};

/// What keeps a started server alive; stopping it removes the server.
pub(crate) enum Keepalive {
    Container(Box<ContainerAsync<Postgres>>),
    Native(Box<pgtemp::PgTempDB>),
    PgCtl {
        pg_ctl: std::path::PathBuf,
        data: std::path::PathBuf,
    },
    External,
}

impl Keepalive {
    async fn stop(self) {
        match self {
            Keepalive::Container(container) => {
                if let Err(e) = container.rm().await {
                    announce(&format!(
                        "could not remove the test PostgreSQL container: {e}"
                    ));
                }
            }
            Keepalive::Native(cluster) => cluster.shutdown(),
            Keepalive::PgCtl { pg_ctl, data } => native::stop_pg_ctl(&pg_ctl, &data),
            Keepalive::External => {}
        }
    }
}

type StopRequest = Sender<()>;
static STOP: Mutex<Option<Sender<StopRequest>>> = Mutex::new(None);

/// Starts the backend `PGWI_TEST_POSTGRES` asks for and returns the ready server.
pub(crate) fn start_shared() -> Result<TestPostgres, TestSupportError> {
    let requested = Requested::parse(std::env::var("PGWI_TEST_POSTGRES").ok().as_deref())?;
    let run = RunFiles::create()?;
    let (ready_tx, ready_rx) = channel();
    let (stop_tx, stop_rx) = channel::<StopRequest>();
    std::thread::Builder::new()
        .name("pgwi-test-postgres".into())
        .spawn(move || serve_until_stopped(requested, run, &ready_tx, &stop_rx))
        .map_err(TestSupportError::io("spawning the test PostgreSQL thread"))?;
    let server = ready_rx.recv().map_err(|_| {
        TestSupportError::NoPostgres("the test PostgreSQL thread ended before it reported".into())
    })??;
    stop_at_exit(stop_tx);
    announce_backend(&server);
    Ok(server)
}

/// What the run makes before the backend starts: the certificates, the token-signing key, and the
/// temporary directory with the CA file.
struct RunFiles {
    certs: TestCertificates,
    token_key: Vec<u8>,
    workdir: tempfile::TempDir,
    ca_file: std::path::PathBuf,
}

impl RunFiles {
    fn create() -> Result<Self, TestSupportError> {
        let certs = TestCertificates::generate()?;
        let token_key = random_key()?;
        let workdir = tempfile::Builder::new()
            .prefix("pgwi-test-postgres-")
            .tempdir()
            .map_err(TestSupportError::io("creating a temporary directory"))?;
        {
            // The native server runs as the `postgres` user when we are root: it must reach its files.
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(workdir.path(), std::fs::Permissions::from_mode(0o755))
                .map_err(TestSupportError::io(
                    "opening the temporary directory to the postgres user",
                ))?;
        }
        let ca_file = workdir.path().join("ca.crt");
        std::fs::write(&ca_file, &certs.ca_pem).map_err(TestSupportError::io(format!(
            "writing {}",
            ca_file.display()
        )))?;
        Ok(Self {
            certs,
            token_key,
            workdir,
            ca_file,
        })
    }
}

/// The server thread: starts the backend on a runtime of its own, reports it ready (or why not), then
/// keeps it until asked to stop, and removes it and the run's files.
fn serve_until_stopped(
    requested: Requested,
    run: RunFiles,
    ready: &Sender<Result<TestPostgres, TestSupportError>>,
    stop: &std::sync::mpsc::Receiver<StopRequest>,
) {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(TestSupportError::io("starting a tokio runtime")(e)));
            return;
        }
    };
    let RunFiles {
        certs,
        token_key,
        workdir,
        ca_file,
    } = run;
    let mut remove_at_exit = Vec::new();
    let started = runtime.block_on(async {
        let (backend, mut started) =
            start_backend(requested, &certs, workdir.path(), &token_key).await?;
        remove_at_exit = std::mem::take(&mut started.remove_at_exit);
        TestPostgres::prepare(backend, started, certs.ca_pem.clone(), ca_file, token_key).await
    });
    match started {
        Err(e) => {
            remove_files(&remove_at_exit);
            let _ = ready.send(Err(e));
        }
        Ok((server, keepalive)) => {
            let _ = ready.send(Ok(server));
            if let Ok(done) = stop.recv() {
                runtime.block_on(keepalive.stop());
                remove_files(&remove_at_exit);
                drop(workdir);
                let _ = done.send(());
            }
        }
    }
}

/// Says, past the test harness's capture, which backend serves this run and whether token roles work.
fn announce_backend(server: &TestPostgres) {
    let tokens = match server.token_checking.available() {
        Ok(()) => "token roles judged like Azure (pam + checker)".to_owned(),
        Err(e) => format!("no token roles: {e}"),
    };
    announce(&format!(
        "PostgreSQL backend: {:?} at {}:{} ({}); TLS on (verify-full with the run's CA), password auth only; {tokens}",
        server.backend(),
        server.host(),
        server.port(),
        server.description()
    ));
}

/// The run's token-signing key: 32 bytes from the system's secure random source.
fn random_key() -> Result<Vec<u8>, TestSupportError> {
    use ring::rand::SecureRandom as _;
    let mut key = vec![0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| {
            TestSupportError::NoPostgres(
                "the system's random source failed while making the token-signing key".into(),
            )
        })?;
    Ok(key)
}

fn remove_files(paths: &[std::path::PathBuf]) {
    for path in paths {
        if let Err(e) = std::fs::remove_file(path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            announce(&format!("could not remove {}: {e}", path.display()));
        }
    }
}

async fn start_backend(
    requested: Requested,
    certs: &TestCertificates,
    workdir: &std::path::Path,
    token_key: &[u8],
) -> Result<(Backend, Started), TestSupportError> {
    match requested {
        Requested::Only(Backend::Container) => Ok((
            Backend::Container,
            container::start(certs, workdir, token_key).await?,
        )),
        Requested::Only(Backend::Native) => {
            Ok((Backend::Native, native::start(certs, workdir, token_key)?))
        }
        Requested::Only(Backend::External) => Ok((Backend::External, external_from_env()?)),
        Requested::Auto => match container::start(certs, workdir, token_key).await {
            Ok(mut started) => {
                started.how = format!("PGWI_TEST_POSTGRES=auto: Docker answered; {}", started.how);
                Ok((Backend::Container, started))
            }
            Err(container_error) => {
                announce(&format!(
                    "PGWI_TEST_POSTGRES=auto: no container ({container_error}); trying native PostgreSQL"
                ));
                match native::start(certs, workdir, token_key) {
                    Ok(mut started) => {
                        started.how = format!(
                            "PGWI_TEST_POSTGRES=auto: container unavailable, so native; {}",
                            started.how
                        );
                        Ok((Backend::Native, started))
                    }
                    Err(native_error) => Err(TestSupportError::NoPostgres(format!(
                        "no PostgreSQL for the tests.\n  container: {container_error}\n  native: {native_error}\n\
                         Fix one of: start Docker and make the image available (`docker pull {image}`, or build \
                         the local one with `testsupport/images/postgres/build.sh` and set \
                         PGWI_TEST_POSTGRES_IMAGE); install PostgreSQL's server binaries (`apt-get install \
                         postgresql`); or set PGWI_TEST_POSTGRES=external with PGWI_TEST_DATABASE_URL.",
                        image = container::image_name()
                    ))),
                }
            }
        },
    }
}

/// The `external` backend: a server someone else runs, reached with an admin URL over verified TLS.
fn external_from_env() -> Result<Started, TestSupportError> {
    use std::str::FromStr as _;
    let missing = |var: &str, what: &str| {
        TestSupportError::Config(format!("PGWI_TEST_POSTGRES=external needs {var}: {what}"))
    };
    let url = std::env::var("PGWI_TEST_DATABASE_URL").map_err(|_| {
        missing(
            "PGWI_TEST_DATABASE_URL",
            "a superuser URL such as postgres://admin:secret@localhost:5432/postgres",
        )
    })?;
    let ca_file = std::env::var("PGWI_TEST_DATABASE_CA_FILE").map_err(|_| {
        missing(
            "PGWI_TEST_DATABASE_CA_FILE",
            "the PEM file of the CA that signed the server's certificate (the bench always uses verify-full)",
        )
    })?;
    let admin = sea_orm::sqlx::postgres::PgConnectOptions::from_str(&url)
        .map_err(|e| {
            TestSupportError::Config(format!(
                "PGWI_TEST_DATABASE_URL is not a PostgreSQL URL ({e}); expected postgres://user:password@host:port/db"
            ))
        })?
        .ssl_mode(sea_orm::sqlx::postgres::PgSslMode::VerifyFull)
        .ssl_root_cert(&ca_file);
    let ca_pem = std::fs::read_to_string(&ca_file).map_err(|e| {
        TestSupportError::Config(format!(
            "PGWI_TEST_DATABASE_CA_FILE={ca_file}: cannot read it: {e}"
        ))
    })?;
    Ok(Started {
        admin,
        how: format!("PGWI_TEST_DATABASE_URL with CA {ca_file}"),
        keepalive: Keepalive::External,
        foreign_ca: Some((ca_pem, ca_file.into())),
        container_id: None,
        socket: None,
        token_checking: tokens::TokenChecking::Unavailable(
            "PGWI_TEST_POSTGRES=external: the bench does not configure that server, so it has no token \
             checker; use the container or native backend for token roles"
                .into(),
        ),
        remove_at_exit: Vec::new(),
    })
}

fn stop_at_exit(stop: Sender<StopRequest>) {
    if let Ok(mut slot) = STOP.lock() {
        *slot = Some(stop);
    }
    // SAFETY: `atexit` only records a function pointer; the handler is a plain `extern "C" fn` that never
    // unwinds (it uses no panicking operations) and touches only a static.
    #[allow(unsafe_code)]
    let registered = unsafe { libc::atexit(stop_shared_server) };
    if registered != 0 {
        announce("could not register the exit hook; the test PostgreSQL may outlive this process");
    }
}

extern "C" fn stop_shared_server() {
    let Some(stop) = STOP.lock().ok().and_then(|mut slot| slot.take()) else {
        return;
    };
    let (done_tx, done_rx) = channel();
    if stop.send(done_tx).is_ok() {
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
    }
}
