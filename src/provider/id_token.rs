//! Validation of the ID tokens a code exchange or refresh returns: signature
//! against the provider's JWKS (cached; refetched once when a `kid` is
//! unknown, which is how key rotation shows), `iss`, `aud`, `exp`, `nonce`.

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tokio::sync::RwLock;
use url::Url;

use super::ProviderError;
use super::discovery::Endpoints;
use super::http::Upstream;

/// Clock skew tolerated on `exp`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Which check an ID token failed. Named in the UNAUTHENTICATED status.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdTokenError {
    #[error("the provider returned no id_token")]
    Missing,
    #[error("the id_token is not a well-formed JWT")]
    Malformed,
    #[error("the id_token is signed with an algorithm bankauth does not accept")]
    Algorithm,
    #[error("no key in the provider's JWKS matches the id_token's kid")]
    UnknownKey,
    #[error("the id_token signature does not verify")]
    Signature,
    #[error("the id_token issuer is not the provider's")]
    Issuer,
    #[error("the id_token audience is not this client")]
    Audience,
    #[error("the id_token has expired")]
    Expired,
    #[error("the id_token nonce does not match the request's")]
    Nonce,
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
            Self::Expired => "exp",
            Self::Nonce => "nonce",
            Self::Jwks(_) | Self::NotConfigured => "jwks",
        }
    }
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
}

/// Validates one provider's ID tokens.
#[derive(Debug)]
pub struct IdTokenVerifier {
    pub(super) upstream: Upstream,
    pub(super) client_id: String,
    pub(super) jwks: RwLock<Option<JwkSet>>,
}

impl IdTokenVerifier {
    pub async fn verify(
        &self,
        endpoints: &Endpoints,
        id_token: &str,
        nonce: Option<&str>,
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
        if let Some(expected) = nonce {
            if claims.nonce.as_deref() != Some(expected) {
                return Err(IdTokenError::Nonce);
            }
        }
        Ok(claims)
    }

    /// The key `kid` names, from the cached JWKS or, when it is not there,
    /// from one fresh fetch (the provider may have rotated its keys).
    async fn key(&self, jwks_url: &Url, kid: Option<&str>) -> Result<Jwk, IdTokenError> {
        if let Some(jwks) = self.jwks.read().await.as_ref() {
            if let Some(jwk) = find_key(jwks, kid) {
                return Ok(jwk.clone());
            }
        }
        let fresh = self.fetch(jwks_url).await.map_err(IdTokenError::Jwks)?;
        let found = find_key(&fresh, kid).cloned();
        *self.jwks.write().await = Some(fresh);
        found.ok_or(IdTokenError::UnknownKey)
    }

    async fn fetch(&self, jwks_url: &Url) -> Result<JwkSet, ProviderError> {
        self.upstream.get_json(jwks_url, "jwks").await
    }
}

/// The key a JWT header's `kid` names; without a `kid`, the only key.
pub fn find_key<'a>(jwks: &'a JwkSet, kid: Option<&str>) -> Option<&'a Jwk> {
    match kid {
        Some(kid) => jwks.find(kid),
        None if jwks.keys.len() == 1 => jwks.keys.first(),
        None => None,
    }
}
