//! Switchboard's integration tests: one binary, each module driving the real
//! server over HTTP on loopback, with real compiled plugins, a real SQLite
//! file, and real local HTTP servers standing in for JustCall and CRMs.

mod attacks;
mod cli;
mod console;
mod conventions;
mod crash;
mod delivery;
mod deploy;
mod dev;
mod fairness;
mod front_door;
mod harness;
mod host_calls;
mod hostile;
mod notices;
mod otlp;
mod plugins;
#[path = "../support/process.rs"]
mod process;
mod reload;
mod secrets;
#[path = "../support/sign_in.rs"]
mod sign_in;
mod signatures;
mod timers;
mod tls;
mod tokens;
mod traces;
mod trials;
mod verification;
mod webhooks;
