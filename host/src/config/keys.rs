//! The keys plugin secrets are sealed with at rest: `secrets_key` (usually
//! `env:NAME`) seals, and `secrets_previous_keys` still open what an earlier
//! key sealed until the start re-seals it. Each is 32 bytes, written as 64
//! hex digits or as base64.

use base64::Engine as _;
use sha2::Digest as _;

/// One 32-byte key; its `Debug` shows only its id.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretsKey([u8; 32]);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretsKey({})", self.id())
    }
}

impl SecretsKey {
    /// Reads 64 hex digits or base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<SecretsKey, String> {
        let text = text.trim();
        let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(text).map_err(|e| e.to_string())?
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "is neither 64 hex digits nor base64 (make one: openssl rand -hex 32)".to_string())?
        };
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("is {} bytes; a key is 32 (make one: openssl rand -hex 32)", b.len()))?;
        Ok(SecretsKey(key))
    }

    /// A new random key.
    pub fn generate() -> SecretsKey {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random number generator");
        SecretsKey(key)
    }

    /// The key, for the cipher.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key as 64 hex digits (to write a generated one down).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// A public name for the key: the first 8 hex digits of its SHA-256,
    /// stored beside each value it seals.
    pub fn id(&self) -> String {
        hex::encode(&sha2::Sha256::digest(self.0)[..4])
    }
}

/// The sealing key and the keys it replaced.
#[derive(Debug, Clone, Default)]
pub struct SecretsKeys {
    /// Seals new values, and re-seals old ones at start; without it, secrets
    /// cannot be set.
    pub current: Option<SecretsKey>,
    /// Open values sealed before a rotation.
    pub previous: Vec<SecretsKey>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_hex_or_base64_and_nothing_else() {
        let hex = "00".repeat(31) + "01";
        let k = SecretsKey::parse(&hex).unwrap();
        assert_eq!(k.bytes()[31], 1);
        let b64 = base64::engine::general_purpose::STANDARD.encode(k.bytes());
        assert_eq!(SecretsKey::parse(&b64).unwrap(), k);
        assert!(SecretsKey::parse("short").unwrap_err().contains("neither"));
        assert!(SecretsKey::parse("AAAA").unwrap_err().contains("3 bytes"));
        assert_eq!(format!("{k:?}"), format!("SecretsKey({})", k.id()));
        assert_ne!(SecretsKey::generate(), SecretsKey::generate());
    }
}
