//! rstest fixtures for the common cases: a fresh database on the shared test server.

use rstest::fixture;

use crate::{TestDatabase, TestPostgres, init_test_logging};

/// The shared server of this test binary, started on first use. Panics with the bench's own clear message
/// (which says how to get a PostgreSQL) when none can be had: a test is never silently skipped.
#[fixture]
pub fn test_postgres() -> &'static TestPostgres {
    init_test_logging();
    TestPostgres::shared().unwrap_or_else(|e| panic!("{e}"))
}

/// A database created for this test alone, with an admin pool connected to it.
#[fixture]
pub async fn fresh_db() -> TestDatabase {
    test_postgres()
        .fresh_database()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}
