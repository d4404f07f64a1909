//! The `native` backend: a throwaway cluster from local PostgreSQL binaries, started with `pgtemp`.
//!
//! PostgreSQL refuses to run as root, so as root pgtemp runs `initdb` and `postgres` through
//! `sudo -u postgres`; we turn pgtemp's panics into a clear error. A fresh machine of this project's kind
//! runs as root without `sudo`: there the cluster is started with `runuser -u postgres` and `pg_ctl`
//! instead (util-linux's `runuser` is always present on Debian), and stopped at exit.
//!
//! Token roles: as root, the run's token checker goes into the run's directory (owned by `postgres`, which
//! runs it through `pam_exec`) and its PAM service into `/etc/pam.d/pgwi-test-token-<pid>-<random>`, removed
//! at exit. The checker is the compiled one (built with cargo, or `PGWI_TOKEN_CHECKER`), copied there with its
//! configuration; where it cannot be built or run, the Perl one (with a warning saying why). Not as root, or
//! without a PAM-enabled PostgreSQL, `pam_exec.so` or either checker, the server runs without token roles and
//! says why.

use std::path::{Path, PathBuf};

use super::tokens::{self, TokenChecking};
use super::{
    ADMIN_USER, ServerFiles, Started, lifetime::Keepalive, local_admin_options, write_server_files,
};
use crate::{TestCertificates, TestSupportError, random_alphanumeric};

/// Where the PAM services of native runs go.
const PAM_DIR: &str = "/etc/pam.d";

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

/// As root, the server runs as `postgres`: give it `path`.
fn give_to_postgres(path: &Path) -> Result<(), TestSupportError> {
    let chown = std::process::Command::new("chown")
        .arg("postgres:")
        .arg(path)
        .output()
        .map_err(TestSupportError::io("running chown"))?;
    if !chown.status.success() {
        return Err(TestSupportError::NoPostgres(format!(
            "running as root, {} must belong to the `postgres` user (the server runs as it), but chown \
             failed: {}; install PostgreSQL (which creates that user) or run the tests as a normal user",
            path.display(),
            String::from_utf8_lossy(&chown.stderr).trim()
        )));
    }
    Ok(())
}

/// The token checking a native run set up.
struct NativeTokens {
    /// The PAM service name for `pg_hba.conf`, when token roles can log in.
    service: Option<String>,
    checking: TokenChecking,
    /// `/etc/pam.d/<service>`, to remove at exit.
    pam_file: Option<PathBuf>,
}

/// Installs the token checker and its PAM service, or says why token roles cannot log in on this run.
fn set_up_tokens(bin: &Path, workdir: &Path, key: &[u8], root: bool) -> NativeTokens {
    match try_set_up_tokens(bin, workdir, key, root) {
        Ok(tokens) => tokens,
        Err(why) => NativeTokens {
            service: None,
            checking: TokenChecking::Unavailable(why),
            pam_file: None,
        },
    }
}

fn try_set_up_tokens(
    bin: &Path,
    workdir: &Path,
    key: &[u8],
    root: bool,
) -> Result<NativeTokens, String> {
    check_token_prerequisites(bin, root)?;
    let checker = write_checker(&workdir.join("tokens"), key)?;
    let pam = install_pam_service(&checker.pam_service)?;
    Ok(NativeTokens {
        service: Some(pam.name),
        checking: TokenChecking::File(checker.log),
        pam_file: Some(pam.file),
    })
}

/// Root (to write the PAM service), a PostgreSQL built with PAM, and `pam_exec.so`.
fn check_token_prerequisites(bin: &Path, root: bool) -> Result<(), String> {
    if !root {
        return Err(format!(
            "the native backend is not running as root, so it cannot install the PAM service token roles need \
             in {PAM_DIR}; run the tests as root, or use the container backend (PGWI_TEST_POSTGRES=container \
             with the image from testsupport/images/postgres/build.sh)"
        ));
    }
    let postgres = bin.join("postgres");
    if !tokens::built_with_pam(&postgres).map_err(|e| e.to_string())? {
        return Err(format!(
            "{} is built without PAM; use a PostgreSQL built --with-pam (Debian's is) or the container backend",
            postgres.display()
        ));
    }
    if tokens::find_pam_exec().is_none() {
        return Err(
            "pam_exec.so is not installed; install it (`apt-get install libpam-modules`) or use the \
             container backend"
                .into(),
        );
    }
    Ok(())
}

/// The PAM service file that runs the token checker, and the log the checker writes its verdicts to.
struct Checker {
    pam_service: String,
    log: PathBuf,
}

/// Writes `contents` to `path` with `mode`; the error says what (`writing`, say) failed and where.
fn write_with_mode(path: &Path, contents: &str, mode: u32, what: &str) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, contents).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("protecting {}: {e}", path.display()))
}

/// The checker and its log in `dir`, readable by the server's user only (the checker's configuration or
/// script holds the signing key): the compiled checker if it can be built and run here, else the Perl one.
fn write_checker(dir: &Path, key: &[u8]) -> Result<Checker, String> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("protecting {}: {e}", dir.display()))?;
    let log = dir.join("checks.log");
    std::fs::write(&log, "").map_err(|e| format!("creating {}: {e}", log.display()))?;
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("protecting {}: {e}", log.display()))?;
    let (pam_service, files) = match write_compiled_checker(dir, key, &log) {
        Ok(written) => written,
        Err(why) => {
            tracing::warn!(
                "token roles are judged by the Perl checker (tens of milliseconds of CPU per login): the \
                 compiled one is not usable here: {why}"
            );
            write_perl_checker(dir, key, &log)?
        }
    };
    for path in [dir, &log]
        .into_iter()
        .chain(files.iter().map(PathBuf::as_path))
    {
        give_to_postgres(path).map_err(|e| e.to_string())?;
    }
    Ok(Checker { pam_service, log })
}

/// The compiled checker copied into `dir` (its build may sit where the server's user cannot reach) with its
/// configuration, tried once here; the PAM service file and the files written.
fn write_compiled_checker(
    dir: &Path,
    key: &[u8],
    log: &Path,
) -> Result<(String, Vec<PathBuf>), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let built = tokens::compiled_checker()?;
    let binary = dir.join("pgwi-token-check");
    std::fs::copy(&built, &binary)
        .map_err(|e| format!("copying {} to {}: {e}", built.display(), binary.display()))?;
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("protecting {}: {e}", binary.display()))?;
    let config = dir.join("config");
    let settings =
        tokens::checker_config(key, &log.display().to_string()).map_err(|e| e.to_string())?;
    write_with_mode(&config, &settings, 0o600, "writing")?;
    tokens::compiled_can_run(&binary, &config)?;
    let pam = tokens::compiled_pam_service_file(
        &binary.display().to_string(),
        &config.display().to_string(),
    );
    Ok((pam, vec![binary, config]))
}

/// The Perl checker script in `dir`; the PAM service file and the file written.
fn write_perl_checker(
    dir: &Path,
    key: &[u8],
    log: &Path,
) -> Result<(String, Vec<PathBuf>), String> {
    let script_path = dir.join("check");
    let script =
        tokens::checker_script(key, &log.display().to_string()).map_err(|e| e.to_string())?;
    write_with_mode(&script_path, &script, 0o600, "writing")?;
    tokens::perl_can_run(&script_path)?;
    let pam = tokens::pam_service_file(&script_path.display().to_string());
    Ok((pam, vec![script_path]))
}

/// A PAM service installed in [`PAM_DIR`].
struct PamService {
    name: String,
    file: PathBuf,
}

/// A PAM service of its own for this process, with `contents` (which run the checker).
fn install_pam_service(contents: &str) -> Result<PamService, String> {
    let service = format!(
        "pgwi-test-token-{}-{}",
        std::process::id(),
        random_alphanumeric(6).to_lowercase()
    );
    let pam_file = Path::new(PAM_DIR).join(&service);
    write_with_mode(&pam_file, contents, 0o644, "writing the PAM service")?;
    Ok(PamService {
        name: service,
        file: pam_file,
    })
}

pub(crate) fn start(
    certs: &TestCertificates,
    workdir: &Path,
    token_key: &[u8],
) -> Result<Started, TestSupportError> {
    let bin = find_bin_dir()?;
    let root = running_as_root()?;
    let tokens = set_up_tokens(&bin, workdir, token_key, root);
    let pam_file = tokens.pam_file.clone();
    let started = start_cluster(&bin, certs, workdir, root, tokens);
    if started.is_err()
        && let Some(pam_file) = pam_file
    {
        let _ = std::fs::remove_file(pam_file);
    }
    started
}

fn start_cluster(
    bin: &Path,
    certs: &TestCertificates,
    workdir: &Path,
    root: bool,
    tokens: NativeTokens,
) -> Result<Started, TestSupportError> {
    let files = write_server_files(certs, &workdir.join("tls"), tokens.service.as_deref())?;
    let password = random_alphanumeric(24);
    crate::secrets::register(&password);
    if root {
        give_to_postgres(&files.key)?;
        if !on_path("sudo") {
            return start_with_runuser(bin, workdir, &password, certs, &files, tokens);
        }
    }
    let path = |p: &Path| p.display().to_string();
    let builder = pgtemp::PgTempDB::builder()
        .with_bin_path(bin)
        .with_data_dir_prefix(workdir)
        .with_username(ADMIN_USER)
        .with_password(&password)
        .with_dbname("postgres")
        .with_initdb_arg("auth", "scram-sha-256")
        .with_config_param("listen_addresses", "127.0.0.1")
        .with_config_param("max_connections", &super::MAX_CONNECTIONS.to_string())
        .with_config_param("ssl", "on")
        .with_config_param("ssl_cert_file", &path(&files.cert))
        .with_config_param("ssl_key_file", &path(&files.key))
        .with_config_param("hba_file", &path(&files.hba))
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
    let admin = local_admin_options(cluster.db_port(), &password, certs);
    let socket = Some((cluster.data_dir(), cluster.db_port()));
    Ok(Started {
        admin,
        socket,
        how: format!("pgtemp cluster from {}", bin.display()),
        keepalive: Keepalive::Native(Box::new(cluster)),
        foreign_ca: None,
        container_id: None,
        token_checking: tokens.checking,
        remove_at_exit: tokens.pam_file.into_iter().collect(),
    })
}

fn run_as_postgres(program: &Path, args: &[String]) -> Result<(), TestSupportError> {
    let output = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .map_err(TestSupportError::io(format!(
            "running {} as postgres",
            program.display()
        )))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(TestSupportError::NoPostgres(format!(
            "{} failed: {}{}; {INSTALL_HINT}",
            program.display(),
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

/// Root without `sudo`: initdb and pg_ctl through `runuser -u postgres`.
fn start_with_runuser(
    bin: &Path,
    workdir: &Path,
    password: &str,
    certs: &TestCertificates,
    files: &ServerFiles,
    tokens: NativeTokens,
) -> Result<Started, TestSupportError> {
    let data = init_data_dir(bin, workdir, password)?;
    let port = free_port()?;
    run_as_postgres(
        &bin.join("pg_ctl"),
        &[
            "-D".into(),
            display(&data),
            "-l".into(),
            display(&data.join("server.log")),
            "-w".into(),
            "-t".into(),
            "60".into(),
            "-o".into(),
            server_options(port, &data, files),
            "start".into(),
        ],
    )?;
    let admin = local_admin_options(port, password, certs);
    Ok(Started {
        admin,
        socket: Some((data.clone(), port)),
        how: format!(
            "cluster from {} started with runuser (root without sudo)",
            bin.display()
        ),
        keepalive: Keepalive::PgCtl {
            pg_ctl: bin.join("pg_ctl"),
            data,
        },
        foreign_ca: None,
        container_id: None,
        token_checking: tokens.checking,
        remove_at_exit: tokens.pam_file.into_iter().collect(),
    })
}

fn display(path: &Path) -> String {
    path.display().to_string()
}

/// `initdb` of `workdir/data` as the postgres user, with the admin's password from a file that lives only
/// while initdb runs.
fn init_data_dir(bin: &Path, workdir: &Path, password: &str) -> Result<PathBuf, TestSupportError> {
    use std::os::unix::fs::PermissionsExt as _;
    let data = workdir.join("data");
    let pwfile = workdir.join("admin-password");
    std::fs::create_dir_all(&data).map_err(TestSupportError::io("creating the data directory"))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))
        .map_err(TestSupportError::io("protecting the data directory"))?;
    std::fs::write(&pwfile, password).map_err(TestSupportError::io("writing the password file"))?;
    std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
        .map_err(TestSupportError::io("protecting the password file"))?;
    give_to_postgres(&data)?;
    give_to_postgres(&pwfile)?;
    run_as_postgres(
        &bin.join("initdb"),
        &[
            "-D".into(),
            display(&data),
            "-N".into(),
            "--username".into(),
            ADMIN_USER.into(),
            "--pwfile".into(),
            display(&pwfile),
            "--auth".into(),
            "scram-sha-256".into(),
        ],
    )?;
    let _ = std::fs::remove_file(&pwfile);
    Ok(data)
}

/// A port nothing listens on right now.
fn free_port() -> Result<u16, TestSupportError> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(TestSupportError::io("finding a free port"))?
        .port())
}

/// The server's settings, as `pg_ctl -o`: loopback only, TLS with the test certificates, and no durability
/// (a test cluster is thrown away).
fn server_options(port: u16, data: &Path, files: &ServerFiles) -> String {
    [
        format!("-c port={port}"),
        "-c listen_addresses=127.0.0.1".into(),
        format!("-c max_connections={}", super::MAX_CONNECTIONS),
        format!("-c unix_socket_directories={}", display(data)),
        "-c ssl=on".into(),
        format!("-c ssl_cert_file={}", display(&files.cert)),
        format!("-c ssl_key_file={}", display(&files.key)),
        format!("-c hba_file={}", display(&files.hba)),
        "-c fsync=off".into(),
        "-c synchronous_commit=off".into(),
    ]
    .join(" ")
}

/// Stops a cluster started by [`start_with_runuser`].
pub(crate) fn stop_pg_ctl(pg_ctl: &Path, data: &Path) {
    let _ = run_as_postgres(
        pg_ctl,
        &[
            "-D".into(),
            data.display().to_string(),
            "-m".into(),
            "immediate".into(),
            "stop".into(),
        ],
    );
}
