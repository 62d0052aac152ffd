//! The domain: the types every layer speaks (the event, its kinds, phone
//! numbers). Below everything; imports nothing of the crate.

pub mod clock;
pub mod event;
pub mod phone;
pub mod text;

pub use clock::Clock;
pub use event::{Direction, Event, EventKind, OPT_IN_KEYWORDS, OPT_OUT_KEYWORDS, TimerFiring};
pub use phone::{Country, PhoneError, PhoneNumber, normalize_e164, parse_country};
pub use text::{MAX_RECORD, cap, escape_controls};
