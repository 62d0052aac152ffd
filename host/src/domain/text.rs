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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_lines() {
        assert!(matches!(escape_controls("plain\ttext é"), Cow::Borrowed(_)));
        assert_eq!(escape_controls("a\nINFO forged\u{1b}[2J"), "a\\nINFO forged\\u{1b}[2J");
    }
}
