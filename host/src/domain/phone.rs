//! Phone numbers in E.164, the one form numbers take inside Switchboard,
//! parsed and validated with libphonenumber's rules (the `phonenumber` crate).

use std::fmt;

pub use phonenumber::country::Id as Country;

/// A valid phone number in E.164 (`+15125551234`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneNumber(String);

/// Why a string is not a phone number; the message completes "`x` …".
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PhoneError {
    /// Not a number at all, or not one any numbering plan allows.
    #[error("is not a valid phone number")]
    Invalid,
    /// Ten digits that read as a US or Canadian number without its country
    /// code: guessing would turn `5125551234` into a Peruvian `+51…`.
    #[error("has no country code (a US or Canadian number?): write it as +1…, or set the tenant's `default_country`")]
    NoCountryCode,
}

impl PhoneNumber {
    /// Parses a number as JustCall and people write it.
    ///
    /// - With `+`, the country code follows: `+1 (512) 555-1234`.
    /// - Without `+` and with a `default_country`, a national number of that
    ///   country (`5125551234` in the US), else E.164 without its plus.
    /// - Without `+` and without a default, E.164 without its plus, as
    ///   JustCall writes it (`15125551234`); ten digits that also read as a
    ///   US or Canadian national number are refused, not guessed.
    ///
    /// The result must be valid in its country's numbering plan.
    pub fn parse(raw: &str, default_country: Option<Country>) -> Result<PhoneNumber, PhoneError> {
        let raw = raw.trim();
        // Digits and the usual punctuation only: libphonenumber would also
        // read keypad letters (`1-800-FLOWERS`) and extensions, which no
        // JustCall number has.
        let (plus, rest) = raw.strip_prefix('+').map_or((false, raw), |r| (true, r));
        let digits: String = rest.chars().filter(char::is_ascii_digit).collect();
        let punctuation_only = rest.chars().all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '(' | ')' | '.'));
        if digits.is_empty() || !punctuation_only {
            return Err(PhoneError::Invalid);
        }
        if plus {
            return valid(None, raw).ok_or(PhoneError::Invalid);
        }
        let international = || valid(None, &format!("+{digits}"));
        match default_country {
            Some(country) => valid(Some(country), raw).or_else(international).ok_or(PhoneError::Invalid),
            None if digits.len() == 10 && valid(Some(Country::US), raw).is_some() => Err(PhoneError::NoCountryCode),
            None => international().ok_or(PhoneError::Invalid),
        }
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

fn valid(country: Option<Country>, text: &str) -> Option<PhoneNumber> {
    let number = phonenumber::parse(country, text).ok()?;
    phonenumber::is_valid(&number).then(|| PhoneNumber(number.format().mode(phonenumber::Mode::E164).to_string()))
}

impl fmt::Display for PhoneNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// [`PhoneNumber::parse`] as a string: the form stored in events and rows.
pub fn normalize_e164(raw: &str, default_country: Option<Country>) -> Result<String, PhoneError> {
    PhoneNumber::parse(raw, default_country).map(PhoneNumber::into_string)
}

/// Parses an ISO 3166 alpha-2 region (`US`, `GB`) that libphonenumber knows.
pub fn parse_country(code: &str) -> Option<Country> {
    if code.len() != 2 || !code.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e164(raw: &str, country: Option<Country>) -> Result<String, PhoneError> {
        normalize_e164(raw, country)
    }

    #[test]
    fn normalises_the_forms_justcall_and_people_use() {
        assert_eq!(e164("15125551234", None).as_deref(), Ok("+15125551234"));
        assert_eq!(e164("+1 (512) 555-1234", None).as_deref(), Ok("+15125551234"));
        assert_eq!(e164(" +44 20 7946 0958", None).as_deref(), Ok("+442079460958"));
        assert_eq!(e164("442079460958", None).as_deref(), Ok("+442079460958"));
    }

    #[test]
    fn a_national_us_number_is_never_read_as_another_country() {
        // Read with its country code missing, this would be Peru (+51).
        assert_eq!(e164("5125551234", None), Err(PhoneError::NoCountryCode));
        assert_eq!(e164("(512) 555-1234", None), Err(PhoneError::NoCountryCode));
        // A default country reads it as national; E.164 without plus still works.
        let us = parse_country("US");
        assert_eq!(e164("5125551234", us).as_deref(), Ok("+15125551234"));
        assert_eq!(e164("15125551234", us).as_deref(), Ok("+15125551234"));
        assert_eq!(e164("442079460958", us).as_deref(), Ok("+442079460958"));
        assert_eq!(e164("020 7946 0958", parse_country("GB")).as_deref(), Ok("+442079460958"));
    }

    #[test]
    fn invalid_numbers_are_refused() {
        for bad in [
            "555",
            "+1512555abcd",
            "0044207946",
            "",
            "+",
            "+5125551234",
            "+1 555 555 0123",
            "1-800-FLOWERS",
        ] {
            assert_eq!(e164(bad, None), Err(PhoneError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn countries_are_upper_case_iso_codes() {
        assert_eq!(parse_country("US"), Some(Country::US));
        assert_eq!(parse_country("us"), None);
        assert_eq!(parse_country("XX"), None);
        assert_eq!(parse_country("USA"), None);
    }
}
