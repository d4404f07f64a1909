//! pgwi-credentials driven through the real Azure SDK against local stand-ins of Entra ID and `az`.

mod az_cli;
mod cache;
mod registry;
mod secrets;
mod static_password;
mod support;
mod workload_identity;
