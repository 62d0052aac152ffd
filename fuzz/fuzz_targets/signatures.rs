//! Both signature schemes with attacker-chosen headers and payloads: the
//! verifiers never panic, and what a scheme signs verifies, while a
//! different signature does not.
#![no_main]

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use switchboard::intake::auth::{self, HeaderLookup};

#[derive(Debug, Arbitrary)]
struct Input {
    secret: String,
    url: String,
    type_name: String,
    timestamp: String,
    signature: String,
    version: Option<String>,
    id: String,
    body: Vec<u8>,
    now_offset: i16,
}

struct Headers(HashMap<&'static str, String>);

impl HeaderLookup for Headers {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

fuzz_target!(|input: Input| {
    let tolerance = Duration::from_secs(300);
    let now = chrono::Utc::now();

    // JustCall v1, headers as an attacker sends them.
    let mut jc = HashMap::from([
        (auth::JC_SIGNATURE, input.signature.clone()),
        (auth::JC_TIMESTAMP, input.timestamp.clone()),
    ]);
    if let Some(v) = &input.version {
        jc.insert(auth::JC_SIGNATURE_VERSION, v.clone());
    }
    let _ = auth::verify_justcall_v1(&input.secret, &input.url, Some(&input.type_name), &Headers(jc), now, tolerance);
    // What JustCall signs verifies at the time it names.
    if let Some(at) = auth::parse_justcall_timestamp(&input.timestamp) {
        let sig = auth::justcall_v1_signature(&input.secret, &input.url, &input.type_name, &input.timestamp);
        let h = Headers(HashMap::from([
            (auth::JC_SIGNATURE, sig.clone()),
            (auth::JC_TIMESTAMP, input.timestamp.clone()),
        ]));
        let when = at + chrono::Duration::seconds(i64::from(input.now_offset) % 300);
        assert_eq!(
            auth::verify_justcall_v1(&input.secret, &input.url, Some(&input.type_name), &h, when, tolerance),
            Ok(sig.clone())
        );
        // Hex is read in either case: a signature differing only in case is
        // the same MAC, not a forgery.
        if input.signature.trim().to_ascii_lowercase() != sig {
            let h = Headers(HashMap::from([
                (auth::JC_SIGNATURE, input.signature.clone()),
                (auth::JC_TIMESTAMP, input.timestamp.clone()),
            ]));
            assert!(auth::verify_justcall_v1(&input.secret, &input.url, Some(&input.type_name), &h, when, tolerance).is_err());
        }
    }

    // Standard Webhooks, headers as an attacker sends them.
    let sw = HashMap::from([
        (auth::SW_ID, input.id.clone()),
        (auth::SW_TIMESTAMP, input.timestamp.clone()),
        (auth::SW_SIGNATURE, input.signature.clone()),
    ]);
    let _ = auth::verify_standard_webhooks(&input.secret, &Headers(sw), &input.body, now, tolerance);
    // What a sender signs verifies.
    let ts = now.timestamp().to_string();
    let sig = auth::standard_webhooks_signature(&input.secret, &input.id, &ts, &input.body);
    let h = Headers(HashMap::from([
        (auth::SW_ID, input.id.clone()),
        (auth::SW_TIMESTAMP, ts.clone()),
        (auth::SW_SIGNATURE, sig),
    ]));
    assert_eq!(
        auth::verify_standard_webhooks(&input.secret, &h, &input.body, now, tolerance),
        Ok(input.id.clone())
    );
});
