//! Operator and plugin-author tools: the command line, `dev` with its JustCall
//! simulator, plugin scaffolding, building, checking and testing, `deploy`,
//! `secret` and `send`.
//! Nothing below this layer imports it.

pub mod admin_cli;
pub mod author;
pub mod author_log;
pub mod cli;
pub mod deploy;
pub mod dev;
pub mod guest_build;
pub mod scaffold;
pub mod secret_cli;
pub mod send;
pub mod simulator;
