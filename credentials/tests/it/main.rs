//! pgwi-credentials driven through the real Azure SDK against local stand-ins of Entra ID and `az`.

mod az_cli;
mod azure_developer_cli;
mod cache;
mod chain;
mod github_actions;
mod kinds;
mod managed_identity;
mod registry;
mod secrets;
mod service_principal;
mod static_password;
mod support;
mod validity;
mod workload_identity;
