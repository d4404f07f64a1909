//! The one metrics recorder of the `pgwi` program: Prometheus' text format, rendered on request (`pgwi
//! proxy`'s `GET /metrics`), with the few process figures Prometheus' own clients export, read from
//! `/proc` at each scrape.

use std::sync::Arc;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use pgwi_core::proxy::server::MetricsRender;

/// Histogram buckets for durations: a token request or a login takes milliseconds to seconds.
const SECONDS_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Installs the Prometheus recorder for the process and describes pgwi's metrics; what renders them.
pub fn install_prometheus() -> anyhow::Result<MetricsRender> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
        .install_recorder()?;
    pgwi_core::metrics::describe();
    Ok(Arc::new(move || {
        let mut text = handle.render();
        text.push_str(&process_metrics());
        text
    }))
}

/// Elsewhere than on Linux there is no `/proc/self` to read them from.
#[cfg(not(target_os = "linux"))]
fn process_metrics() -> String {
    String::new()
}

/// Resident memory, open file descriptors and CPU time from `/proc/self` (Linux; nothing elsewhere), in
/// the text format with the names Prometheus' own client libraries use.
#[cfg(target_os = "linux")]
fn process_metrics() -> String {
    let mut text = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n\n"
        ));
    };
    if let Some(resident_pages) = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<f64>().ok())
    {
        let bytes = resident_pages * rustix::param::page_size() as f64;
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            bytes,
        );
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds.count() as f64,
        );
    }
    if let Some(ticks) = cpu_ticks() {
        let seconds = ticks as f64 / rustix::param::clock_ticks_per_second() as f64;
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            seconds,
        );
    }
    text
}

/// User plus system time of this process in clock ticks (fields 14 and 15 of `/proc/self/stat`, counted
/// after the command name, which may hold spaces and parentheses).
#[cfg(target_os = "linux")]
fn cpu_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after_name = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}
