//! The built-in token sources, one module each, each behind its own cargo feature.

#[cfg(feature = "az-cli")]
pub mod az_cli;
#[cfg(feature = "azure-developer-cli")]
pub mod azure_developer_cli;
#[cfg(any(feature = "az-cli", feature = "azure-developer-cli"))]
mod cli;
#[cfg(feature = "client-certificate")]
pub mod client_certificate;
#[cfg(feature = "client-secret")]
pub mod client_secret;
#[cfg(feature = "azure-sdk")]
pub mod common;
#[cfg(feature = "github-actions")]
pub mod github_actions;
#[cfg(feature = "managed-identity")]
pub mod managed_identity;
#[cfg(feature = "static-password")]
pub mod static_password;
#[cfg(feature = "workload-identity")]
pub mod workload_identity;
