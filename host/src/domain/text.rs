//! Text that came from outside (plugins, webhooks) made safe to show:
//! control characters escaped, so it cannot forge log lines or drive a
//! terminal, and long text cut at a character boundary with a marker.

use std::borrow::Cow;

/// `s` with every control character except tab written as an escape
/// (`\n`, `\u{1b}`); borrowed when there is none.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() && c != '\t') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && c != '\t' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The most bytes of plugin text kept in one record: a failure reason, a
/// stored error, one log line.
pub const MAX_RECORD: usize = 4096;

/// `s` cut to at most `max` bytes at a character boundary, with a marker
/// saying how much was cut; borrowed when it fits.
pub fn cap(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… [{} more bytes cut]", &s[..end], s.len() - end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_boundary_with_a_marker() {
        assert!(matches!(cap("short", 5), Cow::Borrowed("short")));
        assert_eq!(cap("abcdef", 4), "abcd… [2 more bytes cut]");
        // 'é' is two bytes: a cut inside it moves back before it.
        assert_eq!(cap("aé", 2), "a… [2 more bytes cut]");
    }

    #[test]
    fn control_characters_cannot_forge_lines() {
        assert!(matches!(escape_controls("plain\ttext é"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\nINFO forged\u{1b}[2J"), "a\\nINFO forged\\u{1b}[2J");
    }
}
