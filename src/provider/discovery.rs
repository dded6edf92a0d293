//! Where a provider's endpoints are: configured, or read from its OpenID
//! discovery document (`{issuer}/.well-known/openid-configuration`).

use serde::Deserialize;
use url::Url;

use super::ProviderError;
use super::http::Upstream;
use super::kinds::join_path;
use crate::config::ProviderConfig;

/// A provider's endpoints, as configured or discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The issuer ID tokens must name, when the provider has one.
    pub issuer: Option<String>,
    pub token_url: Url,
    /// Keys that sign the provider's ID tokens, when known.
    pub jwks_url: Option<Url>,
    /// Where a user's browser is sent to authorise (discovery only).
    pub authorization_url: Option<Url>,
    /// The pushed authorization request endpoint, RFC 9126 (discovery only).
    pub par_url: Option<Url>,
    /// The token revocation endpoint, RFC 7009 (discovery only).
    pub revocation_url: Option<Url>,
}

#[derive(Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    token_endpoint: Url,
    jwks_uri: Option<Url>,
    authorization_endpoint: Option<Url>,
    pushed_authorization_request_endpoint: Option<Url>,
    revocation_endpoint: Option<Url>,
}

/// Resolves the endpoints: discovery when only an issuer is configured.
pub async fn resolve(
    upstream: &Upstream,
    config: &ProviderConfig,
) -> Result<Endpoints, ProviderError> {
    let issuer = config
        .issuer
        .as_ref()
        .map(|issuer| issuer.as_str().to_owned());
    if let Some(token_url) = config.static_token_url() {
        return Ok(Endpoints {
            issuer,
            token_url,
            jwks_url: config.jwks_url.clone(),
            authorization_url: None,
            par_url: None,
            revocation_url: None,
        });
    }
    let issuer_url = config
        .issuer
        .as_ref()
        .ok_or_else(|| ProviderError::unavailable("neither token_url nor issuer is configured"))?;
    let document = fetch_document(upstream, issuer_url).await?;
    // OpenID Connect Discovery §4.3: the document must name the issuer it was fetched for.
    if document.issuer.trim_end_matches('/') != issuer_url.as_str().trim_end_matches('/') {
        return Err(ProviderError::unavailable(format!(
            "the discovery document names issuer {:?}, not the configured one",
            document.issuer
        )));
    }
    let jwks_url = config.jwks_url.clone().or(document.jwks_uri);
    for (name, url) in [
        ("token_endpoint", Some(&document.token_endpoint)),
        ("jwks_uri", jwks_url.as_ref()),
        (
            "pushed_authorization_request_endpoint",
            document.pushed_authorization_request_endpoint.as_ref(),
        ),
        ("revocation_endpoint", document.revocation_endpoint.as_ref()),
    ] {
        if url.is_some_and(|url| config.refuses_insecure(url)) {
            return Err(ProviderError::unavailable(format!(
                "the discovery document's {name} is http:// off loopback; bankauth sends credentials only over https (for development only: allow_insecure_http = true)"
            )));
        }
    }
    Ok(Endpoints {
        issuer,
        token_url: document.token_endpoint,
        jwks_url,
        authorization_url: document.authorization_endpoint,
        par_url: document.pushed_authorization_request_endpoint,
        revocation_url: document.revocation_endpoint,
    })
}

async fn fetch_document(
    upstream: &Upstream,
    issuer: &Url,
) -> Result<DiscoveryDocument, ProviderError> {
    let url = join_path(issuer, ".well-known/openid-configuration");
    upstream.get_json(&url, "discovery").await
}
