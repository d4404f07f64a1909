//! The `pgwi` program's library: the CronJob's job, migrations, and the token, doctor, proxy and admin
//! bootstrap commands. The binary (`main.rs`) only parses arguments and calls [`cli::dispatch`].

pub mod bootstrap;
pub mod cli;
pub mod doctor;
pub mod entities;
pub mod exec;
pub mod hints;
pub mod job;
pub mod metrics;
pub mod migration;
pub mod proxy;
pub mod signals;
pub mod telemetry;
pub mod token;
