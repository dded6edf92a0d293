//! The embedded default: bankauth against the built-in sandbox provider, with
//! the in-process cache, so it runs with no network, no Redis and no secrets.
//! NOT FOR PRODUCTION: the sandbox and the client key live and die with the process.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use secrecy::SecretString;

use crate::config::{Config, ProviderConfig, ProviderKind};
use crate::provider::{KeyError, SigningAlgorithm, SigningKey};
use crate::sandbox::{
    DEFAULT_REDIRECT_URI, RegisteredClient, Sandbox, SandboxOptions, client_jwks,
};

/// The provider name the demo configures.
pub const DEMO_PROVIDER: &str = "sandbox";
/// The client id the demo registers at its sandbox.
pub const DEMO_CLIENT_ID: &str = "bankauth-demo";

/// Data scopes the demo allows: those the sandbox issues.
pub const DEMO_DATA_SCOPES: &[&str] = &[
    "accounts:read",
    "accounts_details:read",
    "transactions:read:all",
    "categories:read",
];

/// A fresh client key, registered at a sandbox that starts on loopback.
pub struct DemoUpstream {
    pub sandbox: Sandbox,
    pub client_key_pem: SecretString,
}

impl DemoUpstream {
    pub async fn start(
        options: impl FnOnce(RegisteredClient) -> SandboxOptions,
    ) -> Result<Self, std::io::Error> {
        let (client_key, client_key_pem) = SigningKey::generate(SigningAlgorithm::RS256)
            .map_err(|e: KeyError| std::io::Error::other(e.to_string()))?;
        let client = RegisteredClient {
            client_id: DEMO_CLIENT_ID.to_owned(),
            jwks: client_jwks(&client_key),
        };
        let sandbox =
            Sandbox::start(options(client), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        Ok(Self {
            sandbox,
            client_key_pem,
        })
    }

    /// The provider configuration pointing at this sandbox: only the issuer
    /// and the client, as for Moneyhub; endpoints come from discovery.
    pub fn provider_config(&self) -> ProviderConfig {
        let mut config = ProviderConfig::new(ProviderKind::Moneyhub, DEMO_CLIENT_ID);
        config.issuer = Some(self.sandbox.issuer());
        config.private_key_pem = Some(self.client_key_pem.clone());
        config.data_scopes = DEMO_DATA_SCOPES.iter().map(|s| s.to_string()).collect();
        config.application_scopes = vec!["scim_user:read".to_owned()];
        config.redirect_uris = vec![DEFAULT_REDIRECT_URI.to_owned()];
        config
    }

    /// A whole configuration: this sandbox as the only provider, in-process cache.
    pub fn config(&self, listen_addr: SocketAddr) -> Config {
        let mut config = Config {
            server: Default::default(),
            cache: Default::default(),
            telemetry: Default::default(),
            access: crate::config::AccessConfig {
                allow_anonymous: true,
                ..Default::default()
            },
            providers: BTreeMap::from([(DEMO_PROVIDER.to_owned(), self.provider_config())]),
        };
        config.server.listen_addr = listen_addr;
        config.server.allow_plaintext = true;
        config
    }
}

/// What the demo prints once it listens: the calls to try.
pub fn banner(addr: SocketAddr) -> String {
    let target = addr.to_string();
    format!(
        r#"bankauth demo listening on {target} (plaintext gRPC)
Provider "{DEMO_PROVIDER}" is the built-in sandbox: NOT FOR PRODUCTION. Tokens are cached in process.

Try it (grpcurl discovers the API through server reflection):
  grpcurl -plaintext {target} list
  grpcurl -plaintext {target} describe bankauth.v1.AuthService
  grpcurl -plaintext -d '{{"external_id":"customer-1","name":{{"given_name":"Alex","family_name":"Taylor"}},"emails":[{{"value":"alex@example.com","primary":true}}]}}' {target} bankauth.v1.AuthService/CreateUser
  grpcurl -plaintext -d '{{"user_id":"<id from CreateUser>"}}' {target} bankauth.v1.AuthService/GetUser
  grpcurl -plaintext -d '{{"user_id":"<id from CreateUser>"}}' {target} bankauth.v1.AuthService/IssueWidgetToken
  grpcurl -plaintext -d '{{"user_id":"<id from CreateUser>","scopes":["accounts:read","transactions:read:all"]}}' {target} bankauth.v1.AuthService/IssueDataToken
  grpcurl -plaintext -d '{{"user_id":"<id from CreateUser>","redirect_uri":"{DEFAULT_REDIRECT_URI}","connect_bank":{{}}}}' {target} bankauth.v1.AuthService/CreateAuthorizationUrl
  curl -s -o /dev/null -w '%{{redirect_url}}\n' '<url from CreateAuthorizationUrl>'   # the sandbox consents at once: the callback URL with code and state
  grpcurl -plaintext -d '{{"state":"<state>","code":"<code from the callback>"}}' {target} bankauth.v1.AuthService/ExchangeAuthorizationCode
  grpcurl -plaintext {target} grpc.health.v1.Health/Check
"#
    )
}
