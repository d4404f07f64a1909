//! The test bench's own tests: the shared server really authenticates with passwords over verified TLS,
//! judges tokens of token roles as Azure does, refuses what it should, and gives each test its own database.

mod postgres;
mod tokens;
