//! pgwi-core against real PostgreSQL (the test bench) and the local Entra stand-in.
// figment's Jail closures return figment::Error, whose size is not ours to choose.
#![allow(clippy::result_large_err)]

mod config;
mod connection;
mod proxy;
mod proxy_example;
mod rotation;
mod service;
mod support;
mod tls;
