//! Phone numbers in E.164, the one form numbers take inside Switchboard.

use std::fmt;

/// A phone number in E.164 (`+15125551234`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

impl PhoneNumber {
    /// Parses a number as JustCall and people write it: `15125551234` and
    /// `+1 (512) 555-1234` both become `+15125551234`. `None` for anything
    /// that is not 8 to 15 digits, or starts with 0.
    pub fn parse(raw: &str) -> Option<PhoneNumber> {
        let trimmed = raw.trim();
        let digits: String = trimmed.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')' | '.')).collect();
        let digits = digits.strip_prefix('+').unwrap_or(&digits);
        let ok = (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0');
        ok.then(|| PhoneNumber(format!("+{digits}")))
    }

    /// The number, `+` and digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The number as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// [`PhoneNumber::parse`] as a string: the form stored in events and rows.
pub fn normalize_e164(raw: &str) -> Option<String> {
    PhoneNumber::parse(raw).map(PhoneNumber::into_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_the_forms_justcall_and_people_use() {
        assert_eq!(normalize_e164("15125551234").as_deref(), Some("+15125551234"));
        assert_eq!(normalize_e164("+1 (512) 555-1234").as_deref(), Some("+15125551234"));
        assert_eq!(PhoneNumber::parse(" +44 20 7946 0958").unwrap().as_str(), "+442079460958");
        assert_eq!(normalize_e164("555"), None);
        assert_eq!(normalize_e164("+1512555abcd"), None);
        assert_eq!(normalize_e164("0044207946"), None);
        assert_eq!(normalize_e164(""), None);
    }
}
