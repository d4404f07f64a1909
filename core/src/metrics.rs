//! The numbers pgwi records, through the [`metrics`] facade: no exporter here, and next to no cost when the
//! application installs no recorder. `pgwi proxy` serves them at `GET /metrics`; a Rust service installs its
//! own recorder (`core/examples/service.rs` does it with Prometheus in three lines). Labels stay of low
//! cardinality: never a client address, a database name a client chose, or an error's text.
//!
//! The token's figures are recorded by `pgwi-credentials` ([`pgwi_credentials::metrics`]); the proxy's and
//! the pool's here.

pub use pgwi_credentials::metrics::{
    TOKEN_EXPIRY_TIMESTAMP, TOKEN_REQUEST_DURATION, TOKEN_REQUESTS,
    describe as describe_token_metrics,
};

/// Counter `pgwi_proxy_sessions_total{outcome}`: sessions that were logged in (`served`), or that ended
/// before (`refused`: the client got an error; the reason is in [`PROXY_REFUSALS`]).
pub const PROXY_SESSIONS: &str = "pgwi_proxy_sessions_total";
/// Gauge `pgwi_proxy_sessions_active`: sessions relaying now.
pub const PROXY_SESSIONS_ACTIVE: &str = "pgwi_proxy_sessions_active";
/// Histogram `pgwi_proxy_upstream_connect_seconds`: from connecting to the server to its `ReadyForQuery`
/// (TCP, TLS and the login with the token), for sessions that got there.
pub const PROXY_UPSTREAM_CONNECT: &str = "pgwi_proxy_upstream_connect_seconds";
/// Counter `pgwi_proxy_sessions_ended_total{reason}`: sessions the proxy ended at an idle point with 57P01,
/// by why: `drain` (it is stopping) or `token_expired` (`end_sessions_after_token_expiry`).
pub const PROXY_SESSIONS_ENDED: &str = "pgwi_proxy_sessions_ended_total";
/// Counter `pgwi_proxy_bytes_total{direction}`: bytes relayed, `from_client` or `from_server`.
pub const PROXY_BYTES: &str = "pgwi_proxy_bytes_total";
/// Counter `pgwi_proxy_refusals_total{reason}`: connections the proxy refused, by why: `too_many_clients`,
/// `no_token`, `local_password`, `bad_startup`, `tls_required`, `wrong_user`, `unreachable`,
/// `server_refused`.
pub const PROXY_REFUSALS: &str = "pgwi_proxy_refusals_total";
/// Counter `pgwi_proxy_cancel_requests_total{outcome}`: cancel requests `forwarded` to the server, or
/// `dropped` (a key the proxy did not issue, or one already on its way).
pub const PROXY_CANCEL_REQUESTS: &str = "pgwi_proxy_cancel_requests_total";

/// Counter `pgwi_pool_connections_opened_total{outcome}`: new physical connections of a pool, `success` or
/// the failure's class (`refused`, `unreachable`, `tls`, `no_token`, `other`).
pub const POOL_CONNECTIONS_OPENED: &str = "pgwi_pool_connections_opened_total";
/// Gauge `pgwi_pool_connections{state}`: a pool's connections, `idle` or `used` (OpenTelemetry's
/// `db.client.connection.count`), sampled at least every few seconds.
pub const POOL_CONNECTIONS: &str = "pgwi_pool_connections";

/// Gives every metric pgwi records its description and unit in the installed recorder (call once after
/// installing it; Prometheus shows them as `# HELP` lines).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_token_metrics();
    describe_counter!(
        PROXY_SESSIONS,
        "Proxy sessions by outcome: served (logged in) or refused"
    );
    describe_gauge!(PROXY_SESSIONS_ACTIVE, "Proxy sessions relaying now");
    describe_counter!(
        PROXY_SESSIONS_ENDED,
        "Proxy sessions ended at an idle point by the proxy, by reason (drain, token_expired)"
    );
    describe_histogram!(
        PROXY_UPSTREAM_CONNECT,
        Unit::Seconds,
        "Time from connecting to the server to its ReadyForQuery: TCP, TLS and the login"
    );
    describe_counter!(
        PROXY_BYTES,
        Unit::Bytes,
        "Bytes relayed by the proxy, by direction"
    );
    describe_counter!(PROXY_REFUSALS, "Connections the proxy refused, by reason");
    describe_counter!(
        PROXY_CANCEL_REQUESTS,
        "Cancel requests forwarded or dropped"
    );
    describe_counter!(
        POOL_CONNECTIONS_OPENED,
        "New physical pool connections by outcome"
    );
    describe_gauge!(POOL_CONNECTIONS, "Pool connections by state (idle, used)");
}
