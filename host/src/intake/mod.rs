//! Intake: the webhook endpoint, its authentication schemes, and the two
//! JustCall wire formats. Maps what arrives to HTTP statuses; nothing else
//! does.

pub mod auth;
#[cfg(test)]
mod properties;
pub mod webhook;
pub mod wire;
