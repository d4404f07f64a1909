//! The token's numbers, recorded through the [`metrics`] facade (the application installs a recorder, or
//! nothing is kept): how often each source was asked and how it went, how long that took, and when the
//! token new connections get expires — so that "the token expires in under 5 minutes" is one PromQL
//! expression: `pgwi_token_expiry_timestamp_seconds - time() < 300`.

/// Counter `pgwi_token_requests_total{source, outcome}`: requests to a token source (`source` is its kind),
/// `success` or `failure`; cache hits are not requests.
pub const TOKEN_REQUESTS: &str = "pgwi_token_requests_total";
/// Histogram `pgwi_token_request_duration_seconds{source}`: how long those requests took.
pub const TOKEN_REQUEST_DURATION: &str = "pgwi_token_request_duration_seconds";
/// Gauge `pgwi_token_expiry_timestamp_seconds`: the `exp` of the token the cache serves now, in seconds
/// since the epoch (absent for a password without expiry).
pub const TOKEN_EXPIRY_TIMESTAMP: &str = "pgwi_token_expiry_timestamp_seconds";

/// Describes the token's metrics in the installed recorder.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        TOKEN_REQUESTS,
        "Requests to the token source, by source kind and outcome"
    );
    describe_histogram!(
        TOKEN_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of requests to the token source"
    );
    describe_gauge!(
        TOKEN_EXPIRY_TIMESTAMP,
        Unit::Seconds,
        "Expiry (exp) of the token new connections get, seconds since the epoch"
    );
}

/// Records one request to `source` that took `seconds`.
pub(crate) fn record_request(source: &str, success: bool, seconds: f64) {
    let outcome = if success { "success" } else { "failure" };
    metrics::counter!(TOKEN_REQUESTS, "source" => source.to_owned(), "outcome" => outcome)
        .increment(1);
    metrics::histogram!(TOKEN_REQUEST_DURATION, "source" => source.to_owned()).record(seconds);
}

/// Records the expiry of the token the cache serves from now on.
pub(crate) fn record_expiry(expires_at: Option<time::OffsetDateTime>) {
    if let Some(expires_at) = expires_at {
        metrics::gauge!(TOKEN_EXPIRY_TIMESTAMP).set(expires_at.unix_timestamp() as f64);
    }
}
