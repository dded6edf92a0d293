//! Encryption at rest for Redis values: AES-256-GCM with the Redis key name
//! as associated data, so a value copied under another key does not open.
//!
//! A sealed value is `v1.<key id>.<nonce><ciphertext+tag>`. Several keys can
//! be configured: the first seals, all open, so a key rotates without a
//! cold cache. A value that does not open is a miss, never an error.

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use secrecy::ExposeSecret;

use crate::config::{CacheConfig, ConfigError, resolve_secret};

const PREFIX: &[u8] = b"v1.";

/// Seals and opens cache values; without keys, passes them through (only
/// when the configuration explicitly allows plaintext, for development).
pub struct Sealer {
    /// `(key id, key)`; the first one seals.
    keys: Vec<(String, RandomizedNonceKey)>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Sealer").field("key_ids", &ids).finish()
    }
}

/// A key that cannot be used: wrong length.
#[derive(Debug, thiserror::Error)]
#[error("an AES-256-GCM key is 32 bytes")]
pub struct BadKey;

impl Sealer {
    /// Reads the cache encryption keys; errors name the key at fault.
    pub fn from_config(config: &CacheConfig) -> Result<Self, ConfigError> {
        let keys = config
            .encryption_keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let name = format!("cache.encryption_keys[{i}]");
                let encoded = resolve_secret(&name, "key", &key.key, &key.key_file, &key.key_env)?;
                let bytes = base64::Engine::decode(
                    &base64::engine::general_purpose::STANDARD,
                    encoded.expose_secret().trim(),
                )
                .ok()
                .filter(|bytes| bytes.len() == 32)
                .ok_or_else(|| ConfigError::invalid(&name, "must be 32 bytes, Base64-encoded"))?;
                Ok((key.id.clone(), bytes))
            })
            .collect::<Result<_, ConfigError>>()?;
        Self::new(keys).map_err(|e| ConfigError::invalid("cache.encryption_keys", e.to_string()))
    }

    /// `keys` as `(id, 32 raw bytes)`, the sealing key first.
    pub fn new(keys: Vec<(String, Vec<u8>)>) -> Result<Self, BadKey> {
        let keys = keys
            .into_iter()
            .map(|(id, bytes)| {
                RandomizedNonceKey::new(&AES_256_GCM, &bytes)
                    .map(|key| (id, key))
                    .map_err(|_| BadKey)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    pub fn seal(&self, key_name: &str, plaintext: &[u8]) -> Vec<u8> {
        let Some((id, key)) = self.keys.first() else {
            return plaintext.to_vec();
        };
        let mut sealed = plaintext.to_vec();
        let nonce = key
            .seal_in_place_append_tag(Aad::from(key_name.as_bytes()), &mut sealed)
            .expect("AES-GCM sealing of a small value cannot fail");
        [PREFIX, id.as_bytes(), b".", nonce.as_ref(), &sealed].concat()
    }

    /// The plaintext, or `None` when the value does not open under any
    /// configured key for this key name.
    pub fn open(&self, key_name: &str, value: &[u8]) -> Option<Vec<u8>> {
        if self.keys.is_empty() {
            return Some(value.to_vec());
        }
        let rest = value.strip_prefix(PREFIX)?;
        let dot = rest.iter().position(|b| *b == b'.')?;
        let (id, rest) = (&rest[..dot], &rest[dot + 1..]);
        let (_, key) = self
            .keys
            .iter()
            .find(|(key_id, _)| key_id.as_bytes() == id)?;
        if rest.len() < NONCE_LEN {
            return None;
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = ciphertext.to_vec();
        let plaintext = key
            .open_in_place(nonce, Aad::from(key_name.as_bytes()), &mut buffer)
            .ok()?;
        Some(plaintext.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(ids: &[(&str, u8)]) -> Sealer {
        Sealer::new(
            ids.iter()
                .map(|(id, b)| (id.to_string(), vec![*b; 32]))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn values_open_only_under_their_key_name_and_a_known_key() {
        let current = sealer(&[("k1", 1)]);
        let sealed = current.seal("bankauth:v1:token:a", b"secret token");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            current.open("bankauth:v1:token:a", &sealed).unwrap(),
            b"secret token"
        );
        assert_eq!(
            current.open("bankauth:v1:token:b", &sealed),
            None,
            "moved value"
        );
        assert_eq!(
            sealer(&[("k1", 2)]).open("bankauth:v1:token:a", &sealed),
            None
        );
        assert_eq!(current.open("bankauth:v1:token:a", b"garbage"), None);

        let rotated = sealer(&[("k2", 2), ("k1", 1)]);
        assert_eq!(
            rotated.open("bankauth:v1:token:a", &sealed).unwrap(),
            b"secret token"
        );
        assert!(rotated.seal("x", b"v").starts_with(b"v1.k2."));
    }

    #[test]
    fn keys_must_be_32_bytes() {
        assert!(Sealer::new(vec![("k".into(), vec![0; 16])]).is_err());
    }
}
