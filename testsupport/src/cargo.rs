//! Programs the suites build on demand with the `cargo` running them (an example, the Windows build):
//! built now, so a binary left from an earlier build never tests old code, and found where cargo says it
//! put them, whatever the target directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Runs `cargo build ARGS` in `manifest_dir` with the `cargo` binary `cargo` (a test's `env!("CARGO")`) and
/// returns the executable cargo reports for the target named `name`; panics saying `fix` when the build
/// fails.
pub fn build_executable(
    cargo: &str,
    manifest_dir: &Path,
    args: &[&str],
    name: &str,
    fix: &str,
) -> PathBuf {
    let output = Command::new(cargo)
        .current_dir(manifest_dir)
        .arg("build")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running cargo build: {e}"));
    assert!(output.status.success(), "building {name} failed: {fix}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| {
            message["reason"] == "compiler-artifact" && message["target"]["name"] == name
        })
        .find_map(|artifact| artifact["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo reported no executable for {name}"))
}
