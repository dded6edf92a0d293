//! JWT signing with a key parsed once at startup.
//!
//! Signing the client assertion is the cost of every token-cache miss, and
//! `jsonwebtoken` re-parses the private key on every RSA signature. Holding
//! the prepared aws-lc-rs key pair instead roughly halves that cost.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair, RSA_PKCS1_SHA256, RSA_PSS_SHA256,
    RsaKeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use secrecy::SecretString;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use crate::config::SigningAlgorithm;

/// Why a private key could not be used. Never includes key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM document")]
    NotPem,
    #[error(
        "PEM block {0:?} is not a private key (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
    )]
    UnsupportedPemTag(String),
    #[error("the key does not fit algorithm {0}: {1}")]
    Rejected(&'static str, String),
    #[error("signing failed")]
    SigningFailed,
}

enum PreparedKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private key ready to sign JWTs with one algorithm, and its public JWK.
pub struct SigningKey {
    algorithm: SigningAlgorithm,
    key: PreparedKey,
    key_id: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses a PEM private key (PKCS#8, or PKCS#1 for RSA, or SEC1 for EC).
    /// The key id defaults to the RFC 7638 thumbprint of the public key.
    pub fn from_pem(pem_text: &str, algorithm: SigningAlgorithm) -> Result<Self, KeyError> {
        let block = pem::parse(pem_text).map_err(|_| KeyError::NotPem)?;
        let der = block.contents();
        let alg = algorithm.as_str();
        let rejected = |e: aws_lc_rs::error::KeyRejected| KeyError::Rejected(alg, e.to_string());
        let key = match (algorithm, block.tag()) {
            (SigningAlgorithm::RS256 | SigningAlgorithm::PS256, "PRIVATE KEY") => {
                PreparedKey::Rsa(RsaKeyPair::from_pkcs8(der).map_err(rejected)?)
            }
            (SigningAlgorithm::RS256 | SigningAlgorithm::PS256, "RSA PRIVATE KEY") => {
                PreparedKey::Rsa(RsaKeyPair::from_der(der).map_err(rejected)?)
            }
            (SigningAlgorithm::ES256, "PRIVATE KEY") => PreparedKey::Ec(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(rejected)?,
            ),
            (SigningAlgorithm::ES256, "EC PRIVATE KEY") => PreparedKey::Ec(
                EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                    .map_err(rejected)?,
            ),
            (_, tag) => return Err(KeyError::UnsupportedPemTag(tag.to_owned())),
        };
        let mut signing_key = Self {
            algorithm,
            key,
            key_id: String::new(),
            rng: SystemRandom::new(),
        };
        signing_key.key_id = signing_key.thumbprint();
        Ok(signing_key)
    }

    /// Generates a fresh key and returns it with its PKCS#8 PEM, for the demo
    /// and tests: production keys are generated and registered out of band.
    pub fn generate(algorithm: SigningAlgorithm) -> Result<(Self, SecretString), KeyError> {
        let failed = |_| KeyError::Rejected(algorithm.as_str(), "key generation failed".into());
        let pkcs8 = match algorithm {
            SigningAlgorithm::RS256 | SigningAlgorithm::PS256 => {
                RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(failed)?
                    .as_der()
                    .map_err(failed)?
                    .as_ref()
                    .to_vec()
            }
            SigningAlgorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                    .map_err(failed)?
                    .as_ref()
                    .to_vec()
            }
        };
        let pem_text = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8));
        let key = Self::from_pem(&pem_text, algorithm)?;
        Ok((key, SecretString::from(pem_text)))
    }

    /// Replaces the derived key id with the one registered at the provider.
    pub fn with_key_id(mut self, key_id: impl Into<String>) -> Self {
        self.key_id = key_id.into();
        self
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// Signs `claims` as a compact JWS with header `{alg, typ: JWT, kid}`.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        self.sign_typed(claims, "JWT")
    }

    /// Signs `claims` as a compact JWS with header `{alg, typ, kid}`; an
    /// RFC 9068 access token is `typ: at+jwt`.
    pub fn sign_typed<T: Serialize>(&self, claims: &T, typ: &str) -> Result<String, KeyError> {
        let header = serde_json::json!({
            "alg": self.algorithm.as_str(),
            "typ": typ,
            "kid": self.key_id,
        });
        let header = serde_json::to_vec(&header).map_err(|_| KeyError::SigningFailed)?;
        let claims = serde_json::to_vec(claims).map_err(|_| KeyError::SigningFailed)?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let signature = self.sign_bytes(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }

    fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.key {
            PreparedKey::Rsa(key_pair) => {
                let encoding = match self.algorithm {
                    SigningAlgorithm::PS256 => &RSA_PSS_SHA256,
                    _ => &RSA_PKCS1_SHA256,
                };
                let mut signature = vec![0; key_pair.public_modulus_len()];
                key_pair
                    .sign(encoding, &self.rng, message, &mut signature)
                    .map_err(|_| KeyError::SigningFailed)?;
                Ok(signature)
            }
            PreparedKey::Ec(key_pair) => key_pair
                .sign(&self.rng, message)
                .map(|signature| signature.as_ref().to_vec())
                .map_err(|_| KeyError::SigningFailed),
        }
    }

    /// The public half as a JWK (`kid`, `alg`, `use: sig`), as registered at a
    /// provider's JWKS or served from one.
    pub fn public_jwk(&self) -> Jwk {
        let mut jwk = self.public_members();
        jwk["kid"] = self.key_id.clone().into();
        jwk["alg"] = self.algorithm.as_str().into();
        jwk["use"] = "sig".into();
        serde_json::from_value(jwk).expect("a JWK built from a valid key always deserialises")
    }

    /// The required public members in RFC 7638's lexicographic order.
    fn public_members(&self) -> serde_json::Value {
        match &self.key {
            PreparedKey::Rsa(key_pair) => {
                let public = key_pair.public_key();
                serde_json::json!({
                    "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                })
            }
            PreparedKey::Ec(key_pair) => {
                // An uncompressed P-256 point: 0x04 || x (32 bytes) || y (32 bytes).
                let point = key_pair.public_key().as_ref();
                serde_json::json!({
                    "crv": "P-256",
                    "kty": "EC",
                    "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
                    "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
                })
            }
        }
    }

    fn thumbprint(&self) -> String {
        // serde_json keeps object keys sorted, which is the order RFC 7638 requires.
        let canonical = self.public_members().to_string();
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode};
    use serde::Deserialize;

    #[derive(Serialize, Deserialize)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    #[test]
    fn signatures_verify_with_the_public_jwk_for_every_algorithm() {
        for algorithm in [
            SigningAlgorithm::RS256,
            SigningAlgorithm::PS256,
            SigningAlgorithm::ES256,
        ] {
            let (key, _) = SigningKey::generate(algorithm).unwrap();
            let claims = Claims {
                sub: "user-1".into(),
                exp: jsonwebtoken::get_current_timestamp() + 60,
            };
            let jwt = key.sign(&claims).unwrap();
            let header = jsonwebtoken::decode_header(&jwt).unwrap();
            assert_eq!(header.kid.as_deref(), Some(key.key_id()));
            let jwk = key.public_jwk();
            let alg: jsonwebtoken::Algorithm = algorithm.as_str().parse().unwrap();
            let decoded = decode::<Claims>(
                &jwt,
                &DecodingKey::from_jwk(&jwk).unwrap(),
                &Validation::new(alg),
            )
            .unwrap();
            assert_eq!(decoded.claims.sub, "user-1");
        }
    }

    #[test]
    fn the_default_key_id_is_the_rfc_7638_thumbprint() {
        let (key, _) = SigningKey::generate(SigningAlgorithm::ES256).unwrap();
        let expected = key
            .public_jwk()
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .unwrap();
        assert_eq!(key.key_id(), expected);
    }

    #[test]
    fn a_key_for_another_algorithm_is_rejected() {
        let (_, rsa_pem) = SigningKey::generate(SigningAlgorithm::RS256).unwrap();
        let pem_text = secrecy::ExposeSecret::expose_secret(&rsa_pem);
        assert!(SigningKey::from_pem(pem_text, SigningAlgorithm::ES256).is_err());
        assert!(matches!(
            SigningKey::from_pem("not a key", SigningAlgorithm::RS256),
            Err(KeyError::NotPem)
        ));
    }
}
