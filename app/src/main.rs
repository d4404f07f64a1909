//! `pgwi`: the CronJob's job and the tools around it. Commands arrive with the binary's issue; until then
//! the binary only answers `--version`.

fn main() {
    println!("pgwi {}", env!("CARGO_PKG_VERSION"));
}
