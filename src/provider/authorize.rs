//! The authorization request behind CreateAuthorizationUrl: what the user
//! is asked for (Moneyhub's scopes and `claims`), signed as a request object
//! (RFC 9101) with the client key, pushed to the provider (PAR, RFC 9126)
//! where it offers that, and the URL the browser is sent to.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;
use url::form_urlencoded;

use super::client_auth::ClientAuth;
use super::discovery::Endpoints;
use super::http::{Answer, Upstream};
use super::resilience::Replay;
use super::{ProviderError, SigningKey};
use crate::config::{ProviderConfig, ProviderKind};
use crate::domain::ValidationError;
use crate::random::random_hex;

/// A request object lives 5 minutes, as Moneyhub's own client makes them.
const REQUEST_OBJECT_LIFETIME_SECS: i64 = 300;
/// Longest bank or connection id accepted; Moneyhub's are well under 100.
const MAX_ID_LEN: usize = 128;
/// Most consent permissions in one request; Open Banking defines about 30.
const MAX_PERMISSIONS: usize = 64;

/// What the user is asked to do at the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purpose {
    /// Connect a bank: `bank_id` (none: the provider's bank chooser).
    Connect {
        bank_id: Option<String>,
        consent: Option<Consent>,
        async_sync: bool,
    },
    Reauthorize {
        connection_id: String,
    },
    Refresh {
        connection_id: String,
    },
    Reconsent {
        connection_id: String,
        /// Unix seconds.
        consent_expires_at: Option<i64>,
    },
}

impl Purpose {
    /// The connection an existing-connection purpose names.
    pub fn connection_id(&self) -> Option<&str> {
        match self {
            Self::Connect { .. } => None,
            Self::Reauthorize { connection_id }
            | Self::Refresh { connection_id }
            | Self::Reconsent { connection_id, .. } => Some(connection_id),
        }
    }

    /// A short name for logs and audit events.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect_bank",
            Self::Reauthorize { .. } => "reauthorize_connection",
            Self::Refresh { .. } => "refresh_connection",
            Self::Reconsent { .. } => "reconsent_connection",
        }
    }
}

/// Moneyhub's `mh:consent`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub transactions_from: Option<i64>,
    pub permissions: Vec<String>,
    /// `replace` rather than the default `add`.
    pub replace: bool,
}

/// A bank or connection id: 1 to 128 characters of letters, digits and
/// `-_.:~` (Moneyhub's connection ids are `<hex>:<hex>`).
pub fn provider_id(field: &str, value: &str) -> Result<String, ValidationError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '~');
    if value.is_empty() || value.len() > MAX_ID_LEN || !value.chars().all(allowed) {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {MAX_ID_LEN} letters, digits, '-', '_', '.', ':' or '~'"),
        ));
    }
    Ok(value.to_owned())
}

/// Consent permissions: Open Banking names such as `ReadAccountsDetail`.
pub fn permissions(field: &str, values: &[String]) -> Result<Vec<String>, ValidationError> {
    if values.len() > MAX_PERMISSIONS {
        return Err(ValidationError::new(
            field,
            format!("at most {MAX_PERMISSIONS} permissions"),
        ));
    }
    for (i, value) in values.iter().enumerate() {
        if value.is_empty() || value.len() > 64 || !value.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(ValidationError::new(
                format!("{field}[{i}]"),
                "must be 1 to 64 letters and digits, such as ReadAccountsDetail",
            ));
        }
    }
    Ok(values.to_vec())
}

/// Why an authorization request cannot be made for this provider.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthorizeError {
    /// The provider (or its kind) cannot do this.
    #[error("{0}")]
    Unsupported(&'static str),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

/// The parameters of one authorization request, made by the service.
pub struct AuthorizationParams<'a> {
    pub user_id: &'a str,
    pub redirect_uri: &'a str,
    pub state: &'a str,
    pub nonce: &'a str,
    pub code_challenge: &'a str,
    pub purpose: &'a Purpose,
}

/// The URL to send the browser to, and when the provider stops honouring it.
pub struct AuthorizationUrl {
    pub url: Url,
    /// Unix seconds; `None` when only the state's lifetime bounds it.
    pub expires_at: Option<i64>,
}

/// The scope and `claims` a purpose asks for: Moneyhub's, as its own
/// client builds them; for oauth2, only a connection with `sub` named.
fn scope_and_claims(
    config: &ProviderConfig,
    params: &AuthorizationParams<'_>,
) -> Result<(String, Value), AuthorizeError> {
    let sub = json!({ "essential": true, "value": params.user_id });
    if config.kind != ProviderKind::Moneyhub {
        return match params.purpose {
            Purpose::Connect {
                bank_id: None,
                consent: None,
                async_sync: false,
            } => Ok((
                config.authorization_scopes().join(" "),
                json!({ "id_token": { "sub": sub } }),
            )),
            Purpose::Connect { .. } => Err(AuthorizeError::Unsupported(
                "is a generic OpenID provider: bank_id, consent and async_sync are Moneyhub's",
            )),
            _ => Err(AuthorizeError::Unsupported(
                "is a generic OpenID provider: it has no connections to reauthorise, refresh or reconsent",
            )),
        };
    }
    let mut id_token = Map::new();
    id_token.insert("sub".into(), sub);
    let con_id = |value: &str| json!({ "essential": true, "value": value });
    let scope = match params.purpose {
        Purpose::Connect {
            bank_id,
            consent,
            async_sync,
        } => {
            id_token.insert("mh:con_id".into(), json!({ "essential": true }));
            if let Some(consent) = consent {
                id_token.insert("mh:consent".into(), consent_claim(consent));
            }
            if *async_sync {
                id_token.insert(
                    "mh:sync".into(),
                    json!({ "essential": true, "value": { "enableAsync": true } }),
                );
            }
            match bank_id {
                Some(bank_id) => format!("id:{bank_id} openid"),
                None => "openid".to_owned(),
            }
        }
        Purpose::Reauthorize { connection_id } => {
            id_token.insert("mh:con_id".into(), con_id(connection_id));
            "openid reauth".to_owned()
        }
        Purpose::Refresh { connection_id } => {
            id_token.insert("mh:con_id".into(), con_id(connection_id));
            "openid refresh".to_owned()
        }
        Purpose::Reconsent {
            connection_id,
            consent_expires_at,
        } => {
            id_token.insert("mh:con_id".into(), con_id(connection_id));
            if let Some(at) = consent_expires_at {
                id_token.insert(
                    "mh:consent".into(),
                    json!({ "essential": true, "value": { "expirationDateTime": rfc3339(*at) } }),
                );
            }
            "openid reconsent".to_owned()
        }
    };
    Ok((scope, json!({ "id_token": id_token })))
}

/// `mh:consent`: only what was given, dates as RFC 3339.
fn consent_claim(consent: &Consent) -> Value {
    let mut value = Map::new();
    if let Some(at) = consent.expires_at {
        value.insert("expirationDateTime".into(), rfc3339(at).into());
    }
    if let Some(at) = consent.transactions_from {
        value.insert("transactionFromDateTime".into(), rfc3339(at).into());
    }
    if !consent.permissions.is_empty() {
        value.insert("permissions".into(), consent.permissions.clone().into());
        let action = if consent.replace { "replace" } else { "add" };
        value.insert("permissionsAction".into(), action.into());
    }
    json!({ "essential": true, "value": value })
}

fn rfc3339(unix_secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix_secs)
        .ok()
        .and_then(|at| at.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// The request parameters, as a JSON object: the request object's claims
/// (with `iss`, `aud`, times and `jti` added) or the pushed or query form.
fn request_params(
    client_id: &str,
    scope: String,
    claims: Value,
    params: &AuthorizationParams<'_>,
) -> Map<String, Value> {
    let mut map = Map::new();
    for (name, value) in [
        ("client_id", client_id.into()),
        ("response_type", "code".into()),
        ("scope", scope.into()),
        ("redirect_uri", params.redirect_uri.into()),
        ("state", params.state.into()),
        ("nonce", params.nonce.into()),
        ("prompt", "consent".into()),
        ("code_challenge", params.code_challenge.into()),
        ("code_challenge_method", "S256".into()),
        ("claims", claims),
    ] {
        map.insert(name.to_owned(), value);
    }
    map
}

/// Form or query pairs of `params`; `claims` as its JSON text.
fn as_pairs(params: &Map<String, Value>) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(name, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (name.clone(), text)
        })
        .collect()
}

/// Signs the request object: the parameters, `iss` (the client), `aud`
/// (the issuer), `iat`, `nbf`, `exp` (5 minutes on) and a fresh `jti`.
fn request_object(
    signer: &SigningKey,
    client_id: &str,
    issuer: &str,
    mut params: Map<String, Value>,
    now: i64,
) -> Result<String, ProviderError> {
    for (name, value) in [
        ("iss", Value::from(client_id)),
        ("aud", issuer.into()),
        ("iat", now.into()),
        ("nbf", now.into()),
        ("exp", (now + REQUEST_OBJECT_LIFETIME_SECS).into()),
        ("jti", random_hex::<16>().into()),
    ] {
        params.insert(name.to_owned(), value);
    }
    signer
        .sign_typed(&params, "oauth-authz-req+jwt")
        .map_err(|e| ProviderError::unavailable(format!("cannot sign the request object: {e}")))
}

/// The pushed request's answer (RFC 9126 §2.2).
#[derive(Deserialize)]
struct PushedRequest {
    request_uri: String,
    expires_in: i64,
}

/// Builds the authorization URL: pushed (PAR) when the provider advertises
/// it, else with the request object (or, for an oauth2 provider without
/// `request_object_signing_alg`, the plain parameters) in the query.
pub async fn authorization_url(
    upstream: &Upstream,
    config: &ProviderConfig,
    auth: &ClientAuth,
    endpoints: &Endpoints,
    params: &AuthorizationParams<'_>,
) -> Result<AuthorizationUrl, AuthorizeError> {
    let Some(authorization_endpoint) = &endpoints.authorization_url else {
        return Err(AuthorizeError::Unsupported(
            "has no authorization endpoint (its discovery document names none)",
        ));
    };
    let (scope, claims) = scope_and_claims(config, params)?;
    let client_id = config.client_id.as_str();
    let fields = request_params(client_id, scope, claims, params);
    let signer = match (config.signs_authorization_requests(), auth) {
        (false, _) => None,
        (true, ClientAuth::PrivateKeyJwt { signer, .. }) => Some(signer),
        // Configuration validation keeps this from happening.
        (true, _) => {
            return Err(AuthorizeError::Unsupported(
                "signs request objects, which needs client_auth = private_key_jwt",
            ));
        }
    };
    let issuer = endpoints.issuer.as_deref().unwrap_or_default();
    let sign = |fields: Map<String, Value>| {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        signer
            .map(|signer| request_object(signer, client_id, issuer, fields.clone(), now))
            .transpose()
    };
    let mut url = authorization_endpoint.clone();
    if let Some(par_url) = &endpoints.par_url {
        let pushed = push(upstream, auth, client_id, endpoints, par_url, || {
            Ok(match sign(fields.clone())? {
                Some(request) => vec![("request".to_owned(), request)],
                // The client authentication adds client_id.
                None => as_pairs(&fields)
                    .into_iter()
                    .filter(|(name, _)| name != "client_id")
                    .collect(),
            })
        })
        .await?;
        url.query_pairs_mut()
            .append_pair("client_id", client_id)
            .append_pair("request_uri", &pushed.request_uri);
        // The provider's number: saturating, so a huge one cannot overflow
        // (the state's lifetime bounds what the caller is told anyway).
        let expires_at = OffsetDateTime::now_utc()
            .unix_timestamp()
            .saturating_add(pushed.expires_in.max(0));
        return Ok(AuthorizationUrl {
            url,
            expires_at: Some(expires_at),
        });
    }
    match sign(fields.clone())? {
        // OpenID Connect Core §6.1: client_id, response_type and scope
        // also as parameters, the request object's values winning.
        Some(request) => {
            url.query_pairs_mut()
                .append_pair("client_id", client_id)
                .append_pair("response_type", "code")
                .append_pair("scope", fields["scope"].as_str().unwrap_or("openid"))
                .append_pair("request", &request);
        }
        None => {
            url.query_pairs_mut().extend_pairs(as_pairs(&fields));
        }
    }
    Ok(AuthorizationUrl {
        url,
        expires_at: None,
    })
}

/// POSTs the request to the PAR endpoint, authenticated as at the token
/// endpoint. Safe to retry: each attempt is a new request object and
/// client assertion, and an unused `request_uri` merely expires.
async fn push(
    upstream: &Upstream,
    auth: &ClientAuth,
    client_id: &str,
    endpoints: &Endpoints,
    par_url: &Url,
    body: impl Fn() -> Result<Vec<(String, String)>, ProviderError>,
) -> Result<PushedRequest, ProviderError> {
    use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
    upstream
        .call(Replay::Safe, || async {
            let (form, basic) = {
                let mut form = form_urlencoded::Serializer::new(String::new());
                form.extend_pairs(body()?);
                let now = OffsetDateTime::now_utc().unix_timestamp();
                let basic = auth
                    .apply(
                        &mut form,
                        client_id,
                        endpoints.token_url.as_str(),
                        endpoints.issuer.as_deref(),
                        now,
                    )
                    .map_err(|e| {
                        ProviderError::unavailable(format!("cannot authenticate the request: {e}"))
                    })?;
                (form.finish(), basic)
            };
            let mut request = upstream
                .client
                .post(par_url.clone())
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .header(ACCEPT, "application/json")
                .body(form);
            if let Some(basic) = basic {
                request = request.header(AUTHORIZATION, basic);
            }
            let answer = upstream.send(request, "par").await?;
            parse_pushed(&answer)
        })
        .await
}

fn parse_pushed(answer: &Answer) -> Result<PushedRequest, ProviderError> {
    if !answer.is_success() {
        return Err(super::token::error_answer(
            answer,
            "pushed authorization request endpoint",
        ));
    }
    let pushed: PushedRequest = answer.json()?;
    if pushed.request_uri.is_empty() || pushed.request_uri.len() > 2048 {
        return Err(ProviderError::unavailable(
            "the pushed authorization request answer has no usable request_uri",
        ));
    }
    Ok(pushed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientAuthMethod, SigningAlgorithm};

    fn params(purpose: &Purpose) -> AuthorizationParams<'_> {
        AuthorizationParams {
            user_id: "user-1",
            redirect_uri: "https://app.example/cb",
            state: "s",
            nonce: "n",
            code_challenge: "c",
            purpose,
        }
    }

    #[test]
    fn moneyhub_claims_follow_its_client() {
        let config = ProviderConfig::new(ProviderKind::Moneyhub, "client");
        let connect = Purpose::Connect {
            bank_id: Some("1ffe704d".into()),
            consent: Some(Consent {
                expires_at: Some(0),
                transactions_from: None,
                permissions: vec!["ReadAccountsDetail".into()],
                replace: true,
            }),
            async_sync: true,
        };
        let (scope, claims) = scope_and_claims(&config, &params(&connect)).unwrap();
        assert_eq!(scope, "id:1ffe704d openid");
        assert_eq!(
            claims,
            json!({"id_token": {
                "sub": {"essential": true, "value": "user-1"},
                "mh:con_id": {"essential": true},
                "mh:consent": {"essential": true, "value": {
                    "expirationDateTime": "1970-01-01T00:00:00Z",
                    "permissions": ["ReadAccountsDetail"],
                    "permissionsAction": "replace",
                }},
                "mh:sync": {"essential": true, "value": {"enableAsync": true}},
            }})
        );
        let refresh = Purpose::Refresh {
            connection_id: "a:b".into(),
        };
        let (scope, claims) = scope_and_claims(&config, &params(&refresh)).unwrap();
        assert_eq!(scope, "openid refresh");
        assert_eq!(
            claims["id_token"]["mh:con_id"],
            json!({"essential": true, "value": "a:b"})
        );
    }

    #[test]
    fn a_generic_provider_only_connects_with_its_configured_scopes() {
        let mut config = ProviderConfig::new(ProviderKind::Oauth2, "client");
        config.client_auth = Some(ClientAuthMethod::PrivateKeyJwt);
        config.signing_algorithm = SigningAlgorithm::RS256;
        config.authorization_scopes = Some(vec!["openid".into(), "profile".into()]);
        let connect = Purpose::Connect {
            bank_id: None,
            consent: None,
            async_sync: false,
        };
        let (scope, claims) = scope_and_claims(&config, &params(&connect)).unwrap();
        assert_eq!(scope, "openid profile");
        assert_eq!(
            claims,
            json!({"id_token": {"sub": {"essential": true, "value": "user-1"}}})
        );
        for purpose in [
            Purpose::Connect {
                bank_id: Some("b".into()),
                consent: None,
                async_sync: false,
            },
            Purpose::Reauthorize {
                connection_id: "c".into(),
            },
        ] {
            assert!(matches!(
                scope_and_claims(&config, &params(&purpose)),
                Err(AuthorizeError::Unsupported(_))
            ));
        }
    }

    #[test]
    fn ids_and_permissions_are_validated_naming_the_field() {
        assert!(provider_id("connect_bank.bank_id", "1ffe704d").is_ok());
        assert!(provider_id("c", "0a1b:2c3d").is_ok());
        for bad in ["", "a/b", "../x", "a b", "é", &"x".repeat(129)] {
            let error = provider_id("connect_bank.bank_id", bad).unwrap_err();
            assert_eq!(error.field, "connect_bank.bank_id");
        }
        let error =
            permissions("p", &["ReadAccountsDetail".into(), "bad perm".into()]).unwrap_err();
        assert_eq!(error.field, "p[1]");
    }
}
