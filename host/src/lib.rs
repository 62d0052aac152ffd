//! Switchboard: receives JustCall SMS webhooks for many tenants, persists them,
//! and runs each tenant's sandboxed WebAssembly plugins on every event.
//!
//! The binary in `main.rs` is a thin CLI over this library. Tests and embedders
//! start the real server with [`server::run`] on a listener of their choosing.

pub mod admin;
pub mod auth;
pub mod author;
pub mod bindings;
pub mod cache;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod db;
pub mod dev;
pub mod dispatch;
pub mod egress;
pub mod event;
pub mod guest_build;
pub mod justcall;
pub mod lanes;
pub mod plugins;
pub mod runtime;
pub mod scaffold;
pub mod send;
pub mod server;
pub mod simulator;
pub mod watch;
pub mod webhook;
