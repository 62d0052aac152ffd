//! Any bytes as a webhook body, in either wire format: decoding and parsing
//! never panic, and a parsed event survives its stored form unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::domain::{Country, Event};
use switchboard::intake::wire::{self, Body, Parsed};

fuzz_target!(|data: &[u8]| {
    let Ok(Body::Payload(payload)) = wire::decode(data) else { return };
    let _ = payload.type_name();
    for country in [None, Some(Country::US)] {
        if let Ok(Parsed::Event(incoming)) = wire::parse(&payload, country) {
            let event = incoming.event;
            let stored = serde_json::to_string(&event).expect("an event serialises");
            let back: Event = serde_json::from_str(&stored).expect("a stored event reads back");
            assert_eq!(back, event);
            let _ = event.opt_change();
        }
    }
});
