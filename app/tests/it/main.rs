//! The `pgwi` binary run as a child process against the test bench and the local stand-ins.

mod admin;
mod commands;
mod deploy;
mod docs;
mod doctor;
mod exec;
mod image;
mod proxy;
mod run;
mod sources;
mod support;
mod windows;
