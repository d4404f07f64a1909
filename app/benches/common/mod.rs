//! What the `pgwi` benches share: one way to record a row of `task bench`'s table.

use std::path::PathBuf;

use serde_json::Value;

fn results_file() -> Option<PathBuf> {
    std::env::var_os("PGWI_BENCH_RESULTS").map(Into::into)
}

/// Prints `row` and appends it, as a JSON line, to `PGWI_BENCH_RESULTS` (read by `report.py`).
pub(crate) fn emit(row: Value) {
    println!("  {row}");
    if let Some(path) = results_file() {
        use std::io::Write as _;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        writeln!(file, "{row}").expect("writing a result");
    }
}
