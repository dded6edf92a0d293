//! Every Redis key and channel name bankauth uses, built in one place on
//! [`KEY_VERSION`].

use sha2::{Digest, Sha256};

/// Bumped whenever the key derivation or the stored value's shape changes,
/// so old entries are simply never read again. v2: entries name their
/// provider, remembered user ids are sealed.
pub(super) const KEY_VERSION: &str = "v2";

/// The name of a cached token, from its key's digest.
pub(super) fn token(digest: &[u8; 32]) -> String {
    format!("bankauth:{KEY_VERSION}:token:{}", hex::encode(digest))
}

/// The name of the lock replicas take to fill the token named `token_name`.
pub(super) fn lock(token_name: &str) -> String {
    format!("{token_name}:lock")
}

/// Where the entry holding `provider`'s token with `fingerprint` is named.
pub(super) fn fingerprint_index(provider: &str, fingerprint: &str) -> String {
    format!("bankauth:{KEY_VERSION}:fingerprint:{provider}:{fingerprint}")
}

/// The name of a remembered user id, from the digest of what identifies it.
pub(super) fn user(digest: &[u8]) -> String {
    format!("bankauth:{KEY_VERSION}:user:{}", hex::encode(digest))
}

/// The name of a pending authorization (CreateAuthorizationUrl's state),
/// from the digest of caller, provider and state: never the state itself.
pub(super) fn authorization(digest: &[u8]) -> String {
    format!(
        "bankauth:{KEY_VERSION}:authorization:{}",
        hex::encode(digest)
    )
}

/// The sorted set of fingerprints of the tokens cached for one user, scored
/// by when each stops being served (see [`super::UserTokens`]), from the
/// digest of what identifies the user.
pub(super) fn user_tokens(digest: &[u8; 32]) -> String {
    format!("bankauth:{KEY_VERSION}:user-tokens:{}", hex::encode(digest))
}

/// The channel replicas announce invalidations on, as `<provider> <fingerprint>`,
/// and forgotten users on, as `user:forget <user key>` (':' is in no provider name).
pub(super) fn invalidations() -> String {
    format!("bankauth:{KEY_VERSION}:invalidations")
}

/// The bucket holding a provider client's request budget. Deliberately not
/// on [`KEY_VERSION`]: the budget is the provider's limit on the client, so
/// replicas of every version must share one bucket (a rolling upgrade that
/// bumped it would let old and new replicas each spend the whole limit).
/// It stays `v1` for good. A hash: it names no client id.
pub fn budget(provider: &str, client_id: &str) -> String {
    let identity = serde_json::json!(["v1", provider, client_id]).to_string();
    format!(
        "bankauth:v1:budget:{}",
        hex::encode(Sha256::digest(identity))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_keep_their_published_shapes() {
        let digest = [0xab; 32];
        let token = token(&digest);
        assert_eq!(token, format!("bankauth:v2:token:{}", "ab".repeat(32)));
        assert_eq!(lock(&token), format!("{token}:lock"));
        assert_eq!(
            fingerprint_index("moneyhub", "f00d"),
            "bankauth:v2:fingerprint:moneyhub:f00d"
        );
        assert_eq!(user(&[1, 2]), "bankauth:v2:user:0102");
        assert_eq!(authorization(&[1, 2]), "bankauth:v2:authorization:0102");
        assert_eq!(
            user_tokens(&digest),
            format!("bankauth:v2:user-tokens:{}", "ab".repeat(32))
        );
        assert_eq!(invalidations(), "bankauth:v2:invalidations");
        let budget = budget("moneyhub", "client-1");
        assert!(budget.starts_with("bankauth:v1:budget:"), "{budget}");
        assert!(!budget.contains("client-1"));
    }
}
