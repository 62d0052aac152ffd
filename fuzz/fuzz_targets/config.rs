//! Any text as a config file or a plugin manifest: parsing never panics, and
//! an error names a line within the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use switchboard::config::{Config, Manifest};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else { return };
    let lines = src.lines().count().max(1);
    let env = |_: &str| Some("an-environment-secret-long-enough-for-any-key".to_string());
    if let Err(e) = Config::parse(Path::new("/nonexistent/fuzz.toml"), src, &env) {
        assert!(e.line.is_none_or(|l| l >= 1 && l <= lines + 1), "{e}");
    }
    if let Err(e) = Manifest::parse(Path::new("fuzz.toml"), src) {
        assert!(e.line.is_none_or(|l| l >= 1 && l <= lines + 1), "{e}");
    }
});
