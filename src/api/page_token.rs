//! ListUsers' `page_token` (AIP-158): opaque to callers, it carries the
//! SCIM `startIndex` of the next page, bound to the provider and filter of
//! the call that made it.
//!
//! A checksum, not a signature, makes it tamper-evident: garbage or an
//! edited token is refused. A caller who forges a well-formed one gains
//! nothing, since the token only says where the next page starts, which
//! the caller could reach by paging anyway; so no key is needed, and every
//! replica reads every other's tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::domain::{ExternalId, ValidationError};

const FIELD: &str = "page_token";
/// Separates page tokens from any other SHA-256 use.
const DOMAIN: &[u8] = b"bankauth.v1.ListUsers page_token v1\0";
const CHECKSUM_LEN: usize = 8;
/// Far longer than any token this module makes.
const MAX_LEN: usize = 512;

/// What a page token is bound to: the call's provider and filter.
pub struct Listing<'a> {
    pub provider: &'a str,
    pub external_id: Option<&'a ExternalId>,
}

impl Listing<'_> {
    /// A digest of the filter, so a token names no external id.
    fn filter_digest(&self) -> String {
        let filter = self.external_id.map_or("", ExternalId::as_str);
        hex::encode(&Sha256::digest(filter.as_bytes())[..16])
    }

    /// The token for the page starting at `start_index`.
    pub fn token(&self, start_index: u32) -> String {
        let payload = serde_json::json!([1, self.provider, self.filter_digest(), start_index])
            .to_string()
            .into_bytes();
        let checksum = checksum(&payload);
        URL_SAFE_NO_PAD.encode([payload.as_slice(), &checksum].concat())
    }

    /// The `startIndex` a token from [`Listing::token`] carries; refused
    /// unless it is intact and made for this provider and filter.
    pub fn start_index(&self, token: &str) -> Result<u32, ValidationError> {
        let invalid = || ValidationError::new(FIELD, "is not a page token of ListUsers");
        if token.len() > MAX_LEN {
            return Err(invalid());
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let split = bytes.len().checked_sub(CHECKSUM_LEN).ok_or_else(invalid)?;
        let (payload, sum) = bytes.split_at(split);
        if checksum(payload) != sum {
            return Err(invalid());
        }
        let (version, provider, filter, start_index): (u8, String, String, u32) =
            serde_json::from_slice(payload).map_err(|_| invalid())?;
        if version != 1 || start_index < 2 {
            return Err(invalid());
        }
        if provider != self.provider || filter != self.filter_digest() {
            return Err(ValidationError::new(
                FIELD,
                "was made by a call with another provider or external_id",
            ));
        }
        Ok(start_index)
    }
}

fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let digest = Sha256::new()
        .chain_update(DOMAIN)
        .chain_update(payload)
        .finalize();
    let mut sum = [0; CHECKSUM_LEN];
    sum.copy_from_slice(&digest[..CHECKSUM_LEN]);
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing<'a>(provider: &'a str, external_id: Option<&'a ExternalId>) -> Listing<'a> {
        Listing {
            provider,
            external_id,
        }
    }

    #[test]
    fn a_token_reads_back_only_for_its_own_listing() {
        let customer = ExternalId::parse("external_id", "customer-1").unwrap();
        let all = listing("moneyhub", None);
        let token = all.token(51);
        assert_eq!(all.start_index(&token), Ok(51));
        assert!(!token.contains("moneyhub"), "opaque");
        for other in [listing("other", None), listing("moneyhub", Some(&customer))] {
            let refused = other.start_index(&token).unwrap_err();
            assert_eq!(refused.field, "page_token");
            assert!(refused.reason.contains("another"), "{refused}");
        }
    }

    #[test]
    fn garbage_and_edited_tokens_are_refused() {
        let all = listing("moneyhub", None);
        let token = all.token(51);
        let mut edited = URL_SAFE_NO_PAD.decode(&token).unwrap();
        let digit = edited.iter().position(|b| *b == b'5').unwrap();
        edited[digit] = b'9';
        for garbage in [
            "".to_owned(),
            "not a token".to_owned(),
            "AAAA".to_owned(),
            URL_SAFE_NO_PAD.encode(edited),
            format!("{token}A"),
            "A".repeat(4096),
        ] {
            let refused = all.start_index(&garbage).unwrap_err();
            assert_eq!(refused.field, "page_token", "{garbage:?}");
        }
    }
}
