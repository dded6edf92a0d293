//! Validation of the ID tokens a code exchange or refresh returns: signature
//! against the provider's JWKS, `iss`, `aud` (and `azp`), `exp`, `nonce`,
//! `sub`. The JWKS is cached for its `Cache-Control: max-age` and refetched
//! when a `kid` is unknown, which is how key rotation shows, at most once
//! per `jwks_refetch_interval_ms`.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use reqwest::header::{CACHE_CONTROL, HeaderMap};
use serde::Deserialize;
use tokio::sync::RwLock;
use tokio::time::Instant;
use url::Url;

use super::ProviderError;
use super::discovery::Endpoints;
use super::http::Upstream;
use super::resilience::Replay;

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// How long a JWKS is trusted when its answer states no lifetime.
const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(3600);
/// The longest a JWKS is trusted without fetching it again, whatever its
/// `max-age` says.
const MAX_JWKS_AGE: Duration = Duration::from_secs(24 * 3600);

/// Which check an ID token failed. Named in the UNAUTHENTICATED status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdTokenError {
    #[error("the provider returned no id_token")]
    Missing,
    #[error("the id_token is not a well-formed JWT")]
    Malformed,
    #[error(
        "the id_token is signed with an algorithm bankauth does not accept, or not the one its key states"
    )]
    Algorithm,
    #[error("no key in the provider's JWKS matches the id_token's kid")]
    UnknownKey,
    #[error("the id_token signature does not verify")]
    Signature,
    #[error("the id_token issuer is not the provider's")]
    Issuer,
    #[error("the id_token audience is not this client")]
    Audience,
    #[error("the id_token has several audiences and its azp is not this client")]
    AuthorizedParty,
    #[error("the id_token has expired")]
    Expired,
    #[error("the id_token nonce does not match the request's")]
    Nonce,
    #[error("the id_token sub is not the user the request named")]
    Subject,
    #[error("the id_token mh:con_id is missing or not the connection the request named")]
    Connection,
    #[error("the provider's JWKS cannot be fetched: {0}")]
    Jwks(ProviderError),
    #[error(
        "ID tokens cannot be validated: configure issuer (with discovery) or issuer and jwks_url"
    )]
    NotConfigured,
}

impl IdTokenError {
    /// A short name for the failed check, for ErrorInfo metadata.
    pub fn check(&self) -> &'static str {
        match self {
            Self::Missing | Self::Malformed => "id_token",
            Self::Algorithm => "alg",
            Self::UnknownKey => "kid",
            Self::Signature => "signature",
            Self::Issuer => "iss",
            Self::Audience => "aud",
            Self::AuthorizedParty => "azp",
            Self::Expired => "exp",
            Self::Nonce => "nonce",
            Self::Subject => "sub",
            Self::Connection => "mh:con_id",
            Self::Jwks(_) | Self::NotConfigured => "jwks",
        }
    }
}

/// What the grant that returned an ID token lets bankauth expect of it.
#[derive(Debug, Clone, Copy)]
pub enum Expected<'a> {
    /// A code exchange: exactly the request's `nonce` (none when it sent
    /// none, so a token minted for another authorization is refused), and
    /// its `sub` when it named one.
    CodeExchange {
        nonce: Option<&'a str>,
        sub: Option<&'a str>,
    },
    /// A refresh: the new ID token may repeat the original nonce (OIDC Core
    /// §12.2, errata), which bankauth never saw.
    Refresh,
}

/// The validated claims a caller needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IdTokenClaims {
    pub sub: String,
    /// Moneyhub's connection id claim.
    #[serde(rename = "mh:con_id")]
    pub connection_id: Option<String>,
    pub auth_time: Option<i64>,
    nonce: Option<String>,
    aud: Audience,
    azp: Option<String>,
}

/// `aud` is one string or an array of them (RFC 7519 §4.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The provider's keys as last fetched.
#[derive(Debug)]
struct FetchedJwks {
    keys: JwkSet,
    fetched_at: Instant,
    /// From the answer's `Cache-Control`.
    max_age: Duration,
}

/// The cached JWKS and when an unknown `kid` last caused a refetch.
#[derive(Debug, Default)]
pub struct JwksCache {
    current: Option<FetchedJwks>,
    last_refetch: Option<Instant>,
}

/// What the cache can do for a token naming a `kid`.
#[derive(Debug)]
enum Lookup {
    Found(Box<Jwk>),
    /// Not in a fresh JWKS, and refetched too recently to try again.
    Unknown,
    /// Nothing cached, or its max-age has passed.
    Fetch,
    /// Not in a fresh JWKS: the provider may have rotated its keys.
    Refetch,
}

impl JwksCache {
    fn lookup(&self, kid: Option<&str>, refetch_interval: Duration, now: Instant) -> Lookup {
        let Some(current) = &self.current else {
            return Lookup::Fetch;
        };
        // At least the refetch interval (`no-cache` or `max-age=0` would
        // otherwise refetch on every token), at most a day (a key the
        // provider removed is not trusted for a year).
        let max_age = current
            .max_age
            .clamp(refetch_interval, MAX_JWKS_AGE.max(refetch_interval));
        if now.saturating_duration_since(current.fetched_at) >= max_age {
            return Lookup::Fetch;
        }
        if let Some(jwk) = find_key(&current.keys, kid) {
            return Lookup::Found(Box::new(jwk.clone()));
        }
        match self.last_refetch {
            Some(at) if now.saturating_duration_since(at) < refetch_interval => Lookup::Unknown,
            _ => Lookup::Refetch,
        }
    }
}

/// Validates one provider's ID tokens.
#[derive(Debug)]
pub struct IdTokenVerifier {
    pub(super) upstream: Upstream,
    pub(super) client_id: String,
    /// Anyone holding a code could otherwise make bankauth fetch the JWKS
    /// at will by sending ID tokens with made-up `kid`s.
    pub(super) refetch_interval: Duration,
    pub(super) jwks: RwLock<JwksCache>,
    /// One fetch at a time; the cache itself stays readable meanwhile.
    pub(super) fetching: tokio::sync::Mutex<()>,
}

impl IdTokenVerifier {
    pub async fn verify(
        &self,
        endpoints: &Endpoints,
        id_token: &str,
        expected: Expected<'_>,
    ) -> Result<IdTokenClaims, IdTokenError> {
        let (Some(issuer), Some(jwks_url)) = (&endpoints.issuer, &endpoints.jwks_url) else {
            return Err(IdTokenError::NotConfigured);
        };
        let header = decode_header(id_token).map_err(|_| IdTokenError::Malformed)?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
        ) {
            return Err(IdTokenError::Algorithm);
        }
        let jwk = self.key(jwks_url, header.kid.as_deref()).await?;
        // A key that states its algorithm is used with that one only.
        if jwk
            .common
            .key_algorithm
            .is_some_and(|stated| stated != KeyAlgorithm::from(header.alg))
        {
            return Err(IdTokenError::Algorithm);
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|_| IdTokenError::UnknownKey)?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[issuer.as_str(), issuer.trim_end_matches('/')]);
        validation.set_audience(&[self.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let claims = decode::<IdTokenClaims>(id_token, &key, &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::InvalidSignature => IdTokenError::Signature,
                ErrorKind::InvalidIssuer => IdTokenError::Issuer,
                ErrorKind::InvalidAudience => IdTokenError::Audience,
                ErrorKind::ExpiredSignature => IdTokenError::Expired,
                ErrorKind::InvalidAlgorithm => IdTokenError::Algorithm,
                _ => IdTokenError::Malformed,
            })?
            .claims;
        // OIDC Core §3.1.3.7: with several audiences, azp must name this client.
        let several = matches!(&claims.aud, Audience::Many(aud) if aud.len() > 1);
        if (several && claims.azp.is_none())
            || claims
                .azp
                .as_ref()
                .is_some_and(|azp| *azp != self.client_id)
        {
            return Err(IdTokenError::AuthorizedParty);
        }
        if let Expected::CodeExchange { nonce, sub } = expected {
            if claims.nonce.as_deref() != nonce {
                return Err(IdTokenError::Nonce);
            }
            if sub.is_some_and(|sub| sub != claims.sub) {
                return Err(IdTokenError::Subject);
            }
        }
        Ok(claims)
    }

    /// Forgets the cached keys, so the next token fetches them again.
    pub async fn forget_keys(&self) {
        *self.jwks.write().await = JwksCache::default();
    }

    /// The key `kid` names, from the cached JWKS while its max-age lasts,
    /// or from a fresh fetch. When a fetch fails, the keys fetched before
    /// still verify (the provider's JWKS being down fails no exchange that
    /// its last keys can check).
    async fn key(&self, jwks_url: &Url, kid: Option<&str>) -> Result<Jwk, IdTokenError> {
        let lookup = || async {
            let cache = self.jwks.read().await;
            cache.lookup(kid, self.refetch_interval, Instant::now())
        };
        match lookup().await {
            Lookup::Found(jwk) => return Ok(*jwk),
            Lookup::Unknown => return Err(IdTokenError::UnknownKey),
            Lookup::Fetch | Lookup::Refetch => {}
        }
        // Fetches one at a time: whoever waited finds the keys just fetched.
        let _fetching = self.fetching.lock().await;
        match lookup().await {
            Lookup::Found(jwk) => return Ok(*jwk),
            Lookup::Unknown => return Err(IdTokenError::UnknownKey),
            Lookup::Fetch => {}
            // Counted when tried, so a failing JWKS endpoint is not hammered either.
            Lookup::Refetch => self.jwks.write().await.last_refetch = Some(Instant::now()),
        }
        match self.fetch(jwks_url).await {
            Ok(fresh) => {
                let found = find_key(&fresh.keys, kid).cloned();
                self.jwks.write().await.current = Some(fresh);
                found.ok_or(IdTokenError::UnknownKey)
            }
            Err(error) => {
                let mut cache = self.jwks.write().await;
                let Some(previous) = cache.current.as_mut() else {
                    return Err(IdTokenError::Jwks(error));
                };
                // Trusted for one more refetch interval, then tried again.
                previous.fetched_at = Instant::now();
                previous.max_age = self.refetch_interval;
                find_key(&previous.keys, kid)
                    .cloned()
                    .ok_or(IdTokenError::Jwks(error))
            }
        }
    }

    async fn fetch(&self, jwks_url: &Url) -> Result<FetchedJwks, ProviderError> {
        self.upstream
            .call(Replay::Safe, || async {
                let request = self.upstream.client.get(jwks_url.clone());
                let answer = self.upstream.send(request, "jwks").await?;
                if !answer.is_success() {
                    return Err(answer.unexpected());
                }
                Ok(FetchedJwks {
                    keys: answer.json()?,
                    fetched_at: Instant::now(),
                    max_age: max_age(&answer.headers),
                })
            })
            .await
    }
}

/// How long a JWKS answer may be cached: its `Cache-Control: max-age`;
/// nothing with `no-cache` or `no-store`; an hour when it says neither.
fn max_age(headers: &HeaderMap) -> Duration {
    let mut max_age = None;
    let directives = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|directive| directive.trim().to_ascii_lowercase());
    for directive in directives {
        if directive == "no-cache" || directive == "no-store" {
            return Duration::ZERO;
        }
        if let Some(Ok(secs)) = directive.strip_prefix("max-age=").map(str::parse) {
            max_age = Some(Duration::from_secs(secs));
        }
    }
    max_age.unwrap_or(DEFAULT_JWKS_MAX_AGE)
}

/// The key a JWT header's `kid` names; without a `kid`, the only key.
pub fn find_key<'a>(jwks: &'a JwkSet, kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => jwks.find(kid),
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(cache_control: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in cache_control {
            headers.append(CACHE_CONTROL, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_jwks_lifetime_is_its_max_age_or_an_hour() {
        let secs = |values: &[&str]| max_age(&headers(values)).as_secs();
        assert_eq!(secs(&["max-age=120"]), 120);
        assert_eq!(secs(&["public, Max-Age=60, must-revalidate"]), 60);
        assert_eq!(secs(&["public", "max-age=30"]), 30);
        assert_eq!(secs(&["max-age=60, no-cache"]), 0);
        assert_eq!(secs(&["no-store"]), 0);
        assert_eq!(secs(&[]), 3600);
        assert_eq!(secs(&["max-age=soon"]), 3600);
    }

    #[test]
    fn an_unknown_kid_refetches_at_most_once_per_interval_and_a_stale_jwks_always() {
        let key = crate::provider::SigningKey::generate(crate::provider::SigningAlgorithm::ES256)
            .unwrap()
            .0
            .public_jwk();
        let kid = key.common.key_id.clone().unwrap();
        let start = Instant::now();
        let interval = Duration::from_secs(30);
        let mut cache = JwksCache {
            current: Some(FetchedJwks {
                keys: JwkSet { keys: vec![key] },
                fetched_at: start,
                max_age: Duration::from_secs(300),
            }),
            last_refetch: None,
        };
        let at = |secs| start + Duration::from_secs(secs);
        assert!(matches!(
            cache.lookup(Some(&kid), interval, at(10)),
            Lookup::Found(_)
        ));
        assert!(matches!(
            cache.lookup(Some("new"), interval, at(10)),
            Lookup::Refetch
        ));
        cache.last_refetch = Some(at(10));
        assert!(matches!(
            cache.lookup(Some("new"), interval, at(39)),
            Lookup::Unknown
        ));
        assert!(matches!(
            cache.lookup(Some("new"), interval, at(40)),
            Lookup::Refetch
        ));
        assert!(matches!(
            cache.lookup(Some(&kid), interval, at(300)),
            Lookup::Fetch
        ));
        assert!(matches!(
            JwksCache::default().lookup(Some(&kid), interval, at(0)),
            Lookup::Fetch
        ));
    }

    #[test]
    fn a_jwks_lifetime_is_held_between_the_refetch_interval_and_a_day() {
        let key = crate::provider::SigningKey::generate(crate::provider::SigningAlgorithm::ES256)
            .unwrap()
            .0
            .public_jwk();
        let kid = key.common.key_id.clone().unwrap();
        let start = Instant::now();
        let interval = Duration::from_secs(30);
        let cached = |max_age| JwksCache {
            current: Some(FetchedJwks {
                keys: JwkSet {
                    keys: vec![key.clone()],
                },
                fetched_at: start,
                max_age,
            }),
            last_refetch: None,
        };
        let at = |secs| start + Duration::from_secs(secs);
        // `no-cache` (zero) still serves for one refetch interval…
        let no_cache = cached(Duration::ZERO);
        assert!(matches!(
            no_cache.lookup(Some(&kid), interval, at(29)),
            Lookup::Found(_)
        ));
        assert!(matches!(
            no_cache.lookup(Some(&kid), interval, at(30)),
            Lookup::Fetch
        ));
        // …and a year-long max-age is cut to a day.
        let year = cached(Duration::from_secs(365 * 24 * 3600));
        let day = 24 * 3600;
        assert!(matches!(
            year.lookup(Some(&kid), interval, at(day - 1)),
            Lookup::Found(_)
        ));
        assert!(matches!(
            year.lookup(Some(&kid), interval, at(day)),
            Lookup::Fetch
        ));
    }
}
