//! The built-in token sources, one module each, each behind its own cargo feature.

#[cfg(feature = "az-cli")]
pub mod az_cli;
#[cfg(feature = "static-password")]
pub mod static_password;
#[cfg(feature = "workload-identity")]
pub mod workload_identity;
