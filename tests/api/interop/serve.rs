//! The real `bankauth serve` pointed at the interop OpenID provider, as an
//! operator would configure Moneyhub: only the issuer (discovery supplies the
//! token endpoint and JWKS), the client id and the private key file.

use std::path::{Path, PathBuf};

use super::oidc_peer::{CLIENT_ID, OidcPeer, REDIRECT_URI, write_key};
pub use crate::helpers::Bankauth;

/// The provider's name in bankauth's configuration.
pub const PROVIDER: &str = "moneyhub";

/// The data scopes bankauth allows by default: ones the peer grants.
pub const DATA_SCOPES: &[&str] = &["accounts:read", "transactions:read:all"];

/// Writes a `bankauth.toml` with one `kind = "moneyhub"` provider whose
/// issuer is `peer`'s, allowing `data_scopes`; returns its path.
pub fn write_config(dir: &Path, peer: &OidcPeer, data_scopes: &[&str]) -> PathBuf {
    let key = write_key(dir, peer);
    let config = dir.join("bankauth.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            listen_addr = "127.0.0.1:0"
            allow_plaintext = true

            [access]
            allow_anonymous = true

            [providers.{PROVIDER}]
            kind = "moneyhub"
            issuer = "{issuer}"
            client_id = "{CLIENT_ID}"
            private_key_file = "{key}"
            data_scopes = {data_scopes:?}
            application_scopes = ["scim_user:read"]
            redirect_uris = ["{REDIRECT_URI}"]
            "#,
            issuer = peer.issuer(),
            key = key.display(),
        ),
    )
    .unwrap();
    config
}
