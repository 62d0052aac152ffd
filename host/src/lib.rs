//! Switchboard: receives JustCall SMS webhooks for many tenants, persists them,
//! and runs each tenant's sandboxed WebAssembly plugins on every event.
//!
//! The binary in `main.rs` is a thin CLI over this library. Tests and embedders
//! start the real server with [`server::run`] on a listener of their choosing.
//!
//! The modules are layers, each importing only those listed before it
//! (ARCHITECTURE.md gives the order and `tests/all/conventions.rs` checks it):
//! [`domain`] and [`config`], [`storage`], [`engine`], [`intake`] and
//! [`admin`] (siblings), [`console`], [`server`], [`tools`].

pub mod admin;
pub mod config;
pub mod console;
pub mod domain;
pub mod engine;
pub mod intake;
pub mod metrics;
pub mod server;
pub mod storage;
pub mod sync;
pub mod telemetry;
pub mod throttle;
pub mod tools;
