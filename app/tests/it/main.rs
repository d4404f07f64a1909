//! The `pgwi` binary run as a child process against the test bench and the local stand-ins.

mod admin;
mod commands;
mod doctor;
mod run;
mod support;
