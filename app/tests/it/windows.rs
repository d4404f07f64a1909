//! The Windows developer build (`x86_64-pc-windows-gnu`) run under Debian's Wine: `pgwi.exe --help`, a
//! proxy session from psql against the test server through `pgwi.exe proxy` on loopback, and `pgwi.exe
//! exec` giving a Windows command its variables and returning its status.
//!
//! Wine 8 (Debian 12's) has no `bcryptprimitives.dll`, from which Rust's standard library takes
//! `ProcessPrng`: the test builds a one-function stand-in (`app/tests/wine/bcryptprimitives.c`, forwarding
//! to advapi32's `RtlGenRandom`) with MinGW-w64 and puts it next to `pgwi.exe` in cargo's target
//! directory, where Wine's prefix is kept too (made once: Wine's first start takes seconds). Wine starts
//! Unix programs from Windows ones but gives no handle to wait on, so `exec` is shown with `cmd`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use pgwi_testsupport::TestDatabase;
use pgwi_testsupport::fixtures::fresh_db;
use rstest::rstest;

use crate::support::{Pgwi, scram_role, text};

const TARGET: &str = "x86_64-pc-windows-gnu";

/// `pgwi.exe` (built for Windows, the `bcryptprimitives.dll` stand-in beside it) and the Wine prefix the
/// tests share.
struct WindowsBuild {
    exe: PathBuf,
    prefix: PathBuf,
}

/// Fails saying what to install when `program` is missing.
fn require(program: &str, install: &str) {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        found,
        "{program} is needed by the Windows smoke test: {install}"
    );
}

fn windows_build() -> &'static WindowsBuild {
    static BUILD: OnceLock<WindowsBuild> = OnceLock::new();
    BUILD.get_or_init(|| {
        require("wine", "install Debian's wine64 (apt-get install wine64)");
        require(
            "x86_64-w64-mingw32-gcc",
            "install Debian's gcc-mingw-w64-x86-64 (apt-get install gcc-mingw-w64-x86-64)",
        );
        let exe = cargo_build_windows();
        let dir = exe.parent().expect("the target directory");
        let shim = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/wine/bcryptprimitives.c");
        let built = Command::new("x86_64-w64-mingw32-gcc")
            .args(["-shared", "-O2", "-o"])
            .arg(dir.join("bcryptprimitives.dll"))
            .arg(shim)
            .arg("-ladvapi32")
            .status()
            .expect("x86_64-w64-mingw32-gcc");
        assert!(
            built.success(),
            "building the bcryptprimitives.dll stand-in"
        );
        let prefix = dir.join("wineprefix");
        start_wine(&exe, &prefix);
        WindowsBuild { exe, prefix }
    })
}

/// Makes the Wine prefix and keeps its server up for the tests: Wine's first start creates the prefix, and
/// a server that exits as one test's process ends (3 s after its last client) can vanish under another
/// test's starting process ("chdir to /tmp/wine-…/server-…: No such file or directory"). A persistent server
/// (`-p120`: until 2 minutes after its last client) is started first, then one `--help` fills the prefix.
fn start_wine(exe: &Path, prefix: &Path) {
    std::fs::create_dir_all(prefix).expect("the Wine prefix");
    let _ = Command::new("wineserver")
        .arg("-p120")
        .env("WINEPREFIX", prefix)
        .status();
    let first = Command::new("wine")
        .arg(exe)
        .arg("--help")
        .env("WINEPREFIX", prefix)
        .env("WINEDEBUG", "-all")
        .output()
        .expect("wine");
    assert!(
        first.status.success(),
        "pgwi.exe --help under Wine failed while making its prefix:\n{}",
        text(&first.stderr)
    );
}

/// `cargo build` of the `pgwi` binary for Windows; the executable cargo reports.
fn cargo_build_windows() -> PathBuf {
    pgwi_testsupport::cargo::build_executable(
        env!("CARGO"),
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["--quiet", "-p", "pgwi", "--bin", "pgwi", "--target", TARGET],
        "pgwi",
        &format!("add the target (rustup target add {TARGET}) and Debian's gcc-mingw-w64-x86-64"),
    )
}

/// `pgwi.exe ARGS` under Wine.
fn wine(args: &[&str]) -> Pgwi {
    let build = windows_build();
    Pgwi::under_wine(&build.exe, &build.prefix, args)
}

#[tokio::test]
async fn the_windows_build_prints_its_help_under_wine() {
    // Proves: pgwi.exe, built for x86_64-pc-windows-gnu, starts on Windows (Wine) and lists its commands,
    // the developer flow's among them.
    let output = tokio::task::spawn_blocking(|| wine(&["--help"]))
        .await
        .expect("join")
        .output()
        .await;
    assert!(output.status.success(), "{}", text(&output.stderr));
    let help = text(&output.stdout);
    for command in ["Usage: pgwi.exe", "token", "proxy", "exec"] {
        assert!(help.contains(command), "{command} missing from:\n{help}");
    }
}

#[rstest]
#[tokio::test]
async fn a_proxy_session_and_exec_work_from_the_windows_build(
    #[future(awt)] fresh_db: TestDatabase,
) {
    // Proves: on Windows, `pgwi proxy` on loopback TCP logs psql's session in to the test server (over TLS,
    // verify-full against the bench's CA; a static password answered with SCRAM), a socket directory is
    // refused with the fix, and `pgwi exec` gives a Windows command PGHOST/PGPORT/PGUSER on loopback and
    // returns its exit status.
    let db = fresh_db;
    let role = scram_role(&db).await;
    let with_role = |pgwi: Pgwi| {
        pgwi.with_role(&db, &role)
            .env("PGWI_CREDENTIAL__KIND", "static-password")
    };
    let mut running = with_role(
        tokio::task::spawn_blocking(|| wine(&["proxy", "--listen", "127.0.0.1:0"]))
            .await
            .expect("join"),
    )
    .spawn();
    let listening = running
        .wait_for_log("listening", 1, Duration::from_secs(120))
        .await;
    let address = listening[0]["fields"]["address"].as_str().expect("address");
    let (_, port) = address.rsplit_once(':').expect("host:port");
    let port: u16 = port.parse().expect("port");
    let psql = crate::proxy::psql(
        "127.0.0.1",
        port,
        &role.name,
        db.name(),
        "SELECT current_user",
        &[],
    )
    .await;
    assert_eq!(crate::proxy::assert_ok("psql", &psql), role.name);
    drop(running);

    let socket = with_role(wine(&["proxy", "--listen", "/run/pgwi"]))
        .output()
        .await;
    assert_eq!(socket.status.code(), Some(2), "{}", text(&socket.stderr));
    assert!(
        text(&socket.stderr).contains("127.0.0.1"),
        "{}",
        text(&socket.stderr)
    );

    let script = "echo %PGHOST% %PGPORT% %PGUSER% %PGSSLMODE% & exit 7";
    let exec = with_role(wine(&["exec", "--", "cmd", "/c", script]))
        .output()
        .await;
    assert_eq!(exec.status.code(), Some(7), "{}", text(&exec.stderr));
    let seen = text(&exec.stdout);
    let fields: Vec<&str> = seen.split_whitespace().collect();
    assert_eq!(fields.len(), 4, "{seen}");
    assert_eq!(fields[0], "127.0.0.1");
    assert!(
        fields[1].parse::<u16>().is_ok_and(|port| port > 0),
        "{seen}"
    );
    assert_eq!(fields[2..], [role.name.as_str(), "disable"]);
}
