//! The engine: compiling and running plugins (runtime, lanes, dispatch), the
//! host side of their imports (capabilities) and the outside world they reach
//! (JustCall, allow-listed HTTP), and the plugin registry with its watcher.

pub mod accept;
pub mod bindings;
pub mod cache;
pub mod capabilities;
pub mod contract;
pub mod dispatch;
pub mod effects;
pub mod egress;
pub mod invoke;
pub mod justcall;
pub mod lanes;
pub mod notify;
pub mod overlay;
pub mod plugins;
pub mod runtime;
pub mod scheduler;
pub mod secrets;
pub mod shadow;
pub mod state;
pub mod stdio;
pub mod tail;
pub mod tenant;
pub mod timekeeper;
pub mod timer_stage;
pub mod timers;
pub mod trace;
pub mod trials;
pub mod verify;
pub mod wasi_http;
pub mod watch;
