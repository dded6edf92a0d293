//! Each provider kind's protocol, in one place: Moneyhub, MoneyKit and any
//! OAuth 2.0 token endpoint. Their published rate limits, MoneyKit's API,
//! Moneyhub's SCIM default, how each authenticates, and the keys each kind
//! requires or refuses. The configuration holds only what was written.

use url::Url;

use crate::config::{ClientAuthMethod, ConfigError, ProviderConfig, ProviderKind};
use crate::domain::Scope;

/// MoneyKit's production API.
pub const MONEYKIT_API: &str = "https://api.moneykit.com/";

/// What each kind implies where a key is unset.
impl ProviderConfig {
    /// The provider's published limit: Moneyhub allows 1,000 requests a
    /// minute per API client, MoneyKit's token endpoint 300.
    pub fn rate_limit_per_minute(&self) -> Option<u32> {
        let published = match self.kind {
            ProviderKind::Moneyhub => Some(1_000),
            ProviderKind::Moneykit => Some(300),
            ProviderKind::Oauth2 => None,
        };
        self.rate_limit_per_minute.or(published).filter(|n| *n > 0)
    }

    pub fn client_auth(&self) -> ClientAuthMethod {
        self.client_auth.unwrap_or(match self.kind {
            ProviderKind::Moneykit => ClientAuthMethod::ClientSecretBasic,
            _ => ClientAuthMethod::PrivateKeyJwt,
        })
    }

    /// The token endpoint when it is known without discovery.
    pub fn static_token_url(&self) -> Option<Url> {
        match (&self.token_url, self.kind) {
            (Some(url), _) => Some(url.clone()),
            (None, ProviderKind::Moneykit) => {
                let base = self
                    .base_url
                    .clone()
                    .unwrap_or_else(|| MONEYKIT_API.parse().expect("the MoneyKit URL is valid"));
                Some(join_path(&base, "auth/token"))
            }
            (None, _) => None,
        }
    }

    /// SCIM base URL: configured, or Moneyhub's default next to its issuer.
    pub fn scim_url(&self) -> Option<Url> {
        match (&self.scim_url, self.kind, &self.issuer) {
            (Some(url), _, _) => Some(url.clone()),
            (None, ProviderKind::Moneyhub, Some(issuer)) => {
                let mut origin = issuer.clone();
                origin.set_path("/scim");
                origin.set_query(None);
                Some(origin)
            }
            _ => None,
        }
    }

    /// Moneyhub's users API base (users and their connections): configured,
    /// or next to its issuer, as its Node client's `identityServiceUrl + "/users"`.
    /// Other kinds have none unless configured.
    pub fn users_url(&self) -> Option<Url> {
        match (&self.users_url, self.kind, &self.issuer) {
            (Some(url), _, _) => Some(url.clone()),
            (None, ProviderKind::Moneyhub, Some(issuer)) => {
                let mut origin = issuer.clone();
                origin.set_path("/users");
                origin.set_query(None);
                Some(origin)
            }
            _ => None,
        }
    }

    pub fn send_sub(&self) -> bool {
        self.send_sub.unwrap_or(self.kind == ProviderKind::Moneyhub)
    }

    /// Whether authorization requests are signed request objects (RFC
    /// 9101): always for Moneyhub, which requires them; for oauth2 when
    /// `request_object_signing_alg` is set.
    pub fn signs_authorization_requests(&self) -> bool {
        match self.kind {
            ProviderKind::Moneyhub => true,
            ProviderKind::Moneykit => false,
            ProviderKind::Oauth2 => self.request_object_signing_alg.is_some(),
        }
    }

    /// The scopes of an oauth2 authorization request (Moneyhub's follow
    /// from its purpose): configured, or `openid`.
    pub fn authorization_scopes(&self) -> Vec<String> {
        self.authorization_scopes
            .clone()
            .unwrap_or_else(|| vec!["openid".to_owned()])
    }
}

/// Checks the keys `config`'s kind requires and refuses those it cannot
/// use, so a misconfiguration is found at startup rather than on the first
/// call. Errors name `{key}.{field}`.
pub fn validate(key: &str, config: &ProviderConfig) -> Result<(), ConfigError> {
    let invalid =
        |field: &str, reason: &str| ConfigError::invalid(format!("{key}.{field}"), reason);
    let http_url = |field: &str, url: &Option<Url>| match url {
        Some(url) if !(matches!(url.scheme(), "http" | "https") && url.host().is_some()) => {
            Err(invalid(field, "must be an http(s) URL"))
        }
        Some(url) if config.refuses_insecure(url) => Err(invalid(
            field,
            &format!(
                "must be https:// unless on loopback (for development only: {key}.allow_insecure_http = true)"
            ),
        )),
        _ => Ok(()),
    };
    http_url("issuer", &config.issuer)?;
    http_url("base_url", &config.base_url)?;
    http_url("token_url", &config.token_url)?;
    http_url("jwks_url", &config.jwks_url)?;
    http_url("scim_url", &config.scim_url)?;
    http_url("users_url", &config.users_url)?;
    if config.client_id.trim().is_empty() {
        return Err(invalid("client_id", "must not be empty"));
    }
    if config.request_timeout_ms == 0 {
        return Err(invalid("request_timeout_ms", "must be positive"));
    }
    if !(1..=10).contains(&config.retry_max_attempts) {
        return Err(invalid("retry_max_attempts", "must be between 1 and 10"));
    }
    if config.retry_base_delay_ms == 0 || config.retry_max_delay_ms < config.retry_base_delay_ms {
        return Err(invalid(
            "retry_max_delay_ms",
            "must be at least retry_base_delay_ms, which must be positive",
        ));
    }
    if config.breaker_failure_threshold == 0 {
        return Err(invalid("breaker_failure_threshold", "must be positive"));
    }
    if config.max_token_lifetime_secs < config.default_token_lifetime_secs.max(1) {
        return Err(invalid(
            "max_token_lifetime_secs",
            "must be positive and at least default_token_lifetime_secs",
        ));
    }
    if config.jwks_refetch_interval_ms == 0 {
        return Err(invalid("jwks_refetch_interval_ms", "must be positive"));
    }
    for (field, scopes) in [
        ("data_scopes", &config.data_scopes),
        ("application_scopes", &config.application_scopes),
    ] {
        if let Some(bad) = scopes.iter().find(|scope| Scope::parse("", scope).is_err()) {
            return Err(invalid(
                field,
                &format!("{bad:?} is not a valid OAuth 2.0 scope"),
            ));
        }
    }
    validate_authorization(key, config)?;
    match config.kind {
        ProviderKind::Moneyhub => {
            if config.issuer.is_none() {
                return Err(invalid("issuer", "is required for kind \"moneyhub\""));
            }
            if config.client_auth() != ClientAuthMethod::PrivateKeyJwt {
                return Err(invalid(
                    "client_auth",
                    "moneyhub authenticates with private_key_jwt",
                ));
            }
            if config.data_scopes.is_empty() && config.application_scopes.is_empty() {
                return Err(invalid(
                    "data_scopes",
                    "list the scopes IssueDataToken may request",
                ));
            }
        }
        ProviderKind::Moneykit => {
            if config.client_auth() == ClientAuthMethod::PrivateKeyJwt {
                return Err(invalid(
                    "client_auth",
                    "moneykit authenticates with client_secret_basic or client_secret_post",
                ));
            }
            if config.send_sub == Some(true) {
                return Err(invalid("send_sub", "MoneyKit has no users"));
            }
            if !config.data_scopes.is_empty() {
                return Err(invalid(
                    "data_scopes",
                    "MoneyKit has no users: list its scopes under application_scopes",
                ));
            }
            if config.application_scopes.is_empty() {
                return Err(invalid(
                    "application_scopes",
                    "list the scopes IssueDataToken may request",
                ));
            }
        }
        ProviderKind::Oauth2 => {
            if config.issuer.is_none() && config.token_url.is_none() {
                return Err(invalid(
                    "token_url",
                    "set token_url, or issuer for discovery",
                ));
            }
            if config.client_auth.is_none() {
                return Err(invalid(
                    "client_auth",
                    "is required for kind \"oauth2\": private_key_jwt, client_secret_basic or client_secret_post",
                ));
            }
            if config.send_sub.is_none() {
                return Err(invalid("send_sub", "is required for kind \"oauth2\""));
            }
            if config.expiry_field.is_none() {
                return Err(invalid(
                    "expiry_field",
                    "is required for kind \"oauth2\": expires_in, expires_at or auto",
                ));
            }
            if config.data_scopes.is_empty() && config.application_scopes.is_empty() {
                return Err(invalid(
                    "data_scopes",
                    "list the scopes IssueDataToken may request",
                ));
            }
        }
    }
    if !config.data_scopes.is_empty() && !config.send_sub() {
        return Err(invalid(
            "data_scopes",
            "user tokens need send_sub = true; list application token scopes under application_scopes",
        ));
    }
    let (secret_sources, other, other_name) = match config.client_auth() {
        ClientAuthMethod::PrivateKeyJwt => (
            [
                config.private_key_pem.is_some(),
                config.private_key_file.is_some(),
                config.private_key_env.is_some(),
            ],
            config.client_secret_file.is_some() || config.client_secret_env.is_some(),
            "private_key",
        ),
        _ => (
            [
                config.client_secret.is_some(),
                config.client_secret_file.is_some(),
                config.client_secret_env.is_some(),
            ],
            config.private_key_file.is_some() || config.private_key_env.is_some(),
            "client_secret",
        ),
    };
    if secret_sources.iter().filter(|set| **set).count() != 1 {
        return Err(ConfigError::invalid(
            key,
            format!("set exactly one of {other_name}_file and {other_name}_env"),
        ));
    }
    if other {
        return Err(ConfigError::invalid(
            key,
            format!(
                "client_auth {:?} uses only {other_name}; remove the other credential",
                config.client_auth()
            ),
        ));
    }
    Ok(())
}

/// The keys of CreateAuthorizationUrl: redirect URIs callers may choose
/// from, and (oauth2 only) how requests are signed and scoped.
fn validate_authorization(key: &str, config: &ProviderConfig) -> Result<(), ConfigError> {
    let invalid =
        |field: &str, reason: String| ConfigError::invalid(format!("{key}.{field}"), reason);
    if !config.redirect_uris.is_empty() {
        // An authorization needs the discovered authorization endpoint and
        // the ID token checks of the exchange: Moneyhub always has an
        // issuer; an oauth2 provider needs one; MoneyKit has no users.
        let usable = match config.kind {
            ProviderKind::Moneyhub => true,
            ProviderKind::Oauth2 => config.issuer.is_some(),
            ProviderKind::Moneykit => false,
        };
        if !usable {
            return Err(invalid(
                "redirect_uris",
                "needs a provider users authorize at: kind \"moneyhub\", or \"oauth2\" with issuer (for discovery)".into(),
            ));
        }
    }
    for (i, text) in config.redirect_uris.iter().enumerate() {
        let field = format!("redirect_uris[{i}]");
        let uri = match Url::parse(text) {
            Ok(uri) if matches!(uri.scheme(), "http" | "https") && uri.host().is_some() => uri,
            _ => return Err(invalid(&field, "must be an absolute http(s) URL".into())),
        };
        if uri.fragment().is_some() {
            return Err(invalid(&field, "must not have a fragment".into()));
        }
        if !uri.username().is_empty() || uri.password().is_some() {
            return Err(invalid(
                &field,
                "must not carry a user name or password".into(),
            ));
        }
        if config.refuses_insecure(&uri) {
            return Err(invalid(
                &field,
                format!(
                    "must be https:// unless on loopback (for development only: {key}.allow_insecure_http = true)"
                ),
            ));
        }
    }
    if config.kind != ProviderKind::Oauth2 {
        for (field, set) in [
            (
                "request_object_signing_alg",
                config.request_object_signing_alg.is_some(),
            ),
            (
                "authorization_scopes",
                config.authorization_scopes.is_some(),
            ),
        ] {
            if set {
                return Err(invalid(field, "applies to kind \"oauth2\" only".into()));
            }
        }
        return Ok(());
    }
    if let Some(alg) = config.request_object_signing_alg {
        if config.client_auth() != ClientAuthMethod::PrivateKeyJwt {
            return Err(invalid(
                "request_object_signing_alg",
                "needs client_auth = \"private_key_jwt\": the client key signs request objects"
                    .into(),
            ));
        }
        if alg != config.signing_algorithm {
            return Err(invalid(
                "request_object_signing_alg",
                format!(
                    "must be the client key's signing_algorithm ({})",
                    config.signing_algorithm.as_str()
                ),
            ));
        }
    }
    if let Some(scopes) = &config.authorization_scopes {
        if let Some(bad) = scopes.iter().find(|scope| Scope::parse("", scope).is_err()) {
            return Err(invalid(
                "authorization_scopes",
                format!("{bad:?} is not a valid OAuth 2.0 scope"),
            ));
        }
        if !scopes.iter().any(|scope| scope == "openid") {
            return Err(invalid(
                "authorization_scopes",
                "must include \"openid\": the code exchange validates an ID token".into(),
            ));
        }
    }
    Ok(())
}

/// Appends a path segment to a URL whose path may or may not end in `/`.
pub fn join_path(base: &Url, segment: &str) -> Url {
    let mut url = base.clone();
    let path = format!("{}/{segment}", base.path().trim_end_matches('/'));
    url.set_path(&path);
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::config::{Config, SigningAlgorithm};

    /// Parses `toml` and checks every provider as startup does.
    fn check(toml: &str) -> Result<Config, ConfigError> {
        let config = Config::from_toml(toml)?;
        for (name, provider) in &config.providers {
            validate(&format!("providers.{name}"), provider)?;
        }
        Ok(config)
    }

    #[test]
    fn defaults_follow_the_provider_documentation() {
        let config = check(MINIMAL).unwrap();
        let moneyhub = &config.providers["moneyhub"];
        assert_eq!(
            moneyhub.static_token_url(),
            None,
            "discovered from the issuer"
        );
        assert_eq!(
            moneyhub.scim_url().unwrap().as_str(),
            "https://identity.moneyhub.co.uk/scim"
        );
        assert_eq!(
            moneyhub.users_url().unwrap().as_str(),
            "https://identity.moneyhub.co.uk/users"
        );
        assert_eq!(moneyhub.client_auth(), ClientAuthMethod::PrivateKeyJwt);
        assert!(moneyhub.send_sub());
        assert_eq!(config.server.listen_addr.port(), 50051);
        assert_eq!(config.cache.safety_margin_secs, 60);
        assert_eq!(moneyhub.signing_algorithm, SigningAlgorithm::RS256);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let cases = [
            (
                MINIMAL.replace("client-1", " "),
                "providers.moneyhub.client_id",
            ),
            (
                MINIMAL.replace("[\"accounts:read\"]", "[]"),
                "providers.moneyhub.data_scopes",
            ),
            (
                MINIMAL.replace("https://identity", "ftp://identity"),
                "providers.moneyhub.issuer",
            ),
            (
                format!("{MINIMAL}\nprivate_key_env = \"KEY\""),
                "providers.moneyhub",
            ),
            (
                format!(
                    "{MINIMAL}\nredirect_uris = [\"https://app.example/cb\", \"http://app.example/cb\"]"
                ),
                "providers.moneyhub.redirect_uris[1]",
            ),
            (
                format!("{MINIMAL}\nredirect_uris = [\"app.example/cb\"]"),
                "providers.moneyhub",
            ),
            (
                format!("{MINIMAL}\nrequest_object_signing_alg = \"RS256\""),
                "providers.moneyhub.request_object_signing_alg",
            ),
            (
                format!("{MINIMAL}\nusers_url = \"ftp://identity.example/users\""),
                "providers.moneyhub.users_url",
            ),
            (
                format!(
                    "{MINIMAL}\nredirect_uris = [\"https://app.example/cb\", \"https://me:pw@app.example/cb\"]"
                ),
                "providers.moneyhub.redirect_uris[1]",
            ),
        ];
        for (toml, key) in cases {
            let error = check(&toml).unwrap_err().to_string();
            assert!(error.contains(key), "{error:?} does not name {key}");
        }
    }

    /// Redirect URIs only where CreateAuthorizationUrl can use them: a
    /// provider with an authorization endpoint (discovered from `issuer`)
    /// and ID tokens to validate; refused at startup, naming the key.
    #[test]
    fn redirect_uris_are_refused_where_no_authorization_can_use_them() {
        for (kind, issuer) in [(ProviderKind::Moneykit, None), (ProviderKind::Oauth2, None)] {
            let mut config = ProviderConfig::new(kind, "client");
            config.issuer = issuer;
            config.redirect_uris = vec!["https://app.example/cb".parse().unwrap()];
            let error = validate_authorization("providers.p", &config)
                .expect_err("refused at startup")
                .to_string();
            assert!(error.contains("providers.p.redirect_uris"), "{error}");
        }
        let mut config = ProviderConfig::new(ProviderKind::Oauth2, "client");
        config.issuer = Some("https://auth.example".parse().unwrap());
        config.redirect_uris = vec!["https://app.example/cb".parse().unwrap()];
        validate_authorization("providers.p", &config).unwrap();
    }

    #[test]
    fn http_endpoints_off_loopback_are_refused_unless_allowed() {
        let token_url = |url: &str| {
            MINIMAL.replace(
                "data_scopes",
                &format!("token_url = \"{url}\"\ndata_scopes"),
            )
        };
        for (toml, key) in [
            (
                MINIMAL.replace("https://identity", "http://identity"),
                "providers.moneyhub.issuer",
            ),
            (
                token_url("http://auth.example.com/token"),
                "providers.moneyhub.token_url",
            ),
        ] {
            let error = check(&toml).unwrap_err().to_string();
            assert!(error.contains(key), "{error:?} does not name {key}");
            assert!(
                error.contains("providers.moneyhub.allow_insecure_http"),
                "{error:?}"
            );
            let allowed = toml.replace("data_scopes", "allow_insecure_http = true\ndata_scopes");
            check(&allowed).unwrap();
        }
        for loopback in [
            "http://127.0.0.1:8080/token",
            "http://127.3.2.1/token",
            "http://localhost:8080/token",
            "http://[::1]:8080/token",
        ] {
            check(&token_url(loopback)).unwrap();
        }
    }
}
