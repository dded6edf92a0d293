//! Validated domain types. Each is checked once, when built from caller input,
//! so the service and provider layers never see an invalid value.

use std::collections::BTreeSet;
use std::fmt;

use time::OffsetDateTime;

/// A caller-supplied value failed validation. `field` is the request field's
/// proto name, so the caller can tell which one to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Longest user id accepted. Provider ids are short (Moneyhub uses 24 hex
/// characters); the bound keeps hostile input out of URLs and cache keys.
const MAX_USER_ID_LEN: usize = 128;
/// Moneyhub's own bound on `externalId`.
const MAX_EXTERNAL_ID_LEN: usize = 128;
/// RFC 5321's bound on a forward path, which Moneyhub applies to emails.
const MAX_EMAIL_LEN: usize = 254;
const MAX_NAME_LEN: usize = 256;
const MAX_SCOPES: usize = 32;
const MAX_SCOPE_LEN: usize = 128;

/// The provider's id for a user. It travels into a URL path and a token's
/// `sub`, so it must be one URL path segment: URL-safe characters, and not
/// `.` or `..`, which a URL resolves away (GetUser would read the SCIM
/// collection instead of a user).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(String);

impl UserId {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        if value.len() > MAX_USER_ID_LEN {
            return Err(ValidationError::new(
                field,
                format!("must be at most {MAX_USER_ID_LEN} characters"),
            ));
        }
        let url_safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~');
        if !value.chars().all(url_safe) {
            return Err(ValidationError::new(
                field,
                "may contain only letters, digits, '-', '_', '.' and '~'",
            ));
        }
        if value == "." || value == ".." {
            return Err(ValidationError::new(
                field,
                "must be one URL path segment, not \".\" or \"..\"",
            ));
        }
        if has_scim_format_suffix(value) {
            return Err(ValidationError::new(
                field,
                "must not end in \".scim\", which a SCIM server may read as a format suffix (RFC 7644 §3.8)",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether a path segment ends in `.scim`, in any case: RFC 7644 §3.8 lets
/// a SCIM server read that suffix as a format request and strip it, so
/// `users/.scim` addresses the collection (a list of every user) and
/// `users/x.scim` the user `x`.
pub fn has_scim_format_suffix(segment: &str) -> bool {
    let suffix = ".scim";
    segment.len() >= suffix.len()
        && segment.as_bytes()[segment.len() - suffix.len()..]
            .eq_ignore_ascii_case(suffix.as_bytes())
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The caller's own identifier for a user, as Moneyhub bounds it: 1 to 128
/// characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExternalId(String);

impl ExternalId {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        bounded_text(field, value, 1, MAX_EXTERNAL_ID_LEN).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, checked for the shape every provider accepts:
/// `local@domain.tld`, no whitespace, at most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        if value.len() > MAX_EMAIL_LEN {
            return Err(ValidationError::new(
                field,
                format!("must be at most {MAX_EMAIL_LEN} characters"),
            ));
        }
        let malformed = || ValidationError::new(field, "is not a valid email address");
        let (local, domain) = value.rsplit_once('@').ok_or_else(malformed)?;
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.contains('@')
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && !"\"(),:;<>[\\]".contains(c));
        let domain_ok = domain.contains('.') && domain.split('.').all(label_ok);
        if local_ok && domain_ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(malformed())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text a person typed (a name, an external id): `min` (0 or 1) to
/// `max` characters, no control characters.
pub fn bounded_text(
    field: &str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<String, ValidationError> {
    let len = value.chars().count();
    if len < min || len > max {
        let bounds = if min == 0 {
            format!("must be at most {max} characters")
        } else {
            format!("must be {min} to {max} characters")
        };
        return Err(ValidationError::new(field, bounds));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(value.to_owned())
}

/// Whether `value` is a SHA-256 as 64 lowercase hex characters, the form
/// `sha256sum` prints: token hashes in requests, API key hashes in the
/// configuration.
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A SHA-256 as 64 lowercase hex characters (see [`is_sha256_hex`]).
pub fn sha256_hex(field: &str, value: &str) -> Result<String, ValidationError> {
    if is_sha256_hex(value) {
        Ok(value.to_owned())
    } else {
        Err(ValidationError::new(
            field,
            "must be 64 lowercase hex characters",
        ))
    }
}

/// An opaque credential or parameter from the provider (authorization code,
/// refresh token, nonce): 1 to `max` visible ASCII characters (RFC 6749's
/// VSCHAR), so it is safe in a form body and a log-free error message.
pub fn opaque_value(field: &str, value: &str, max: usize) -> Result<String, ValidationError> {
    if value.is_empty() || value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("must be 1 to {max} characters"),
        ));
    }
    if !value.bytes().all(|b| (0x20..=0x7E).contains(&b)) {
        return Err(ValidationError::new(field, "must be printable ASCII"));
    }
    Ok(value.to_owned())
}

/// A PKCE code verifier (RFC 7636 §4.1): 43 to 128 unreserved characters.
pub fn code_verifier(field: &str, value: &str) -> Result<String, ValidationError> {
    let unreserved = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
    if (43..=128).contains(&value.len()) && value.chars().all(unreserved) {
        Ok(value.to_owned())
    } else {
        Err(ValidationError::new(
            field,
            "must be 43 to 128 characters of A-Z, a-z, 0-9, '-', '.', '_', '~' (RFC 7636)",
        ))
    }
}

/// An absolute http(s) redirect URI, at most 2048 characters.
pub fn redirect_uri(field: &str, value: &str) -> Result<String, ValidationError> {
    let valid = value.len() <= 2048
        && url::Url::parse(value)
            .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.fragment().is_none());
    if valid {
        Ok(value.to_owned())
    } else {
        Err(ValidationError::new(
            field,
            "must be an absolute http(s) URL without a fragment, at most 2048 characters",
        ))
    }
}

/// A person's name part: bounded, no control characters. May be empty,
/// since SCIM 2.0 makes every name part optional.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamePart(String);

impl NamePart {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        bounded_text(field, value, 0, MAX_NAME_LEN).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One OAuth 2.0 scope token (RFC 6749 §3.3: printable ASCII except space,
/// `"` and `\`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

impl Scope {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() || value.len() > MAX_SCOPE_LEN {
            return Err(ValidationError::new(
                field,
                format!("each scope must be 1 to {MAX_SCOPE_LEN} characters"),
            ));
        }
        let scope_char =
            |b: u8| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b);
        if !value.bytes().all(scope_char) {
            return Err(ValidationError::new(
                field,
                format!("{value:?} is not a valid OAuth 2.0 scope"),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A normalised scope set: sorted and de-duplicated, so `["b", "a", "a"]` and
/// `["a", "b"]` are the same request and share one cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScopeSet(BTreeSet<Scope>);

impl ScopeSet {
    /// Parses caller-supplied scopes; at least one is required.
    pub fn parse<S: AsRef<str>>(field: &str, values: &[S]) -> Result<Self, ValidationError> {
        if values.is_empty() {
            return Err(ValidationError::new(
                field,
                "at least one scope is required",
            ));
        }
        if values.len() > MAX_SCOPES {
            return Err(ValidationError::new(
                field,
                format!("at most {MAX_SCOPES} scopes may be requested"),
            ));
        }
        values
            .iter()
            .map(|value| Scope::parse(field, value.as_ref()))
            .collect::<Result<_, _>>()
            .map(Self)
    }

    /// Parses a space-separated scope string as a provider reports it,
    /// dropping anything that is not a valid scope token.
    pub fn from_granted(granted: &str) -> Self {
        Self(
            granted
                .split_ascii_whitespace()
                .filter_map(|value| Scope::parse("scope", value).ok())
                .collect(),
        )
    }

    pub fn single(scope: &str) -> Self {
        Self(BTreeSet::from([Scope(scope.to_owned())]))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The RFC 6749 wire form: scopes joined by single spaces, sorted.
    pub fn to_space_separated(&self) -> String {
        self.iter().map(Scope::as_str).collect::<Vec<_>>().join(" ")
    }

    pub fn to_vec(&self) -> Vec<String> {
        self.iter().map(|scope| scope.as_str().to_owned()).collect()
    }
}

/// A user's name as SCIM 2.0 carries it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PersonName {
    pub given_name: NamePart,
    pub family_name: NamePart,
}

/// One of a user's email addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    pub value: EmailAddress,
    pub primary: bool,
}

/// The subtenant a user is placed under (Moneyhub's SCIM extension).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subtenant {
    pub name: String,
    pub provider_id: String,
}

/// A user to create: already validated as the provider validates it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    pub external_id: ExternalId,
    pub name: PersonName,
    pub email: Email,
    pub subtenant: Option<Subtenant>,
}

/// A tenant user as the provider stores it. Built from the provider's answer,
/// so its fields are reported as given rather than re-validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub external_id: String,
    pub given_name: String,
    pub family_name: String,
    pub emails: Vec<UserEmail>,
    pub created: Option<OffsetDateTime>,
    pub subtenant: Option<Subtenant>,
}

/// An email address as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEmail {
    pub value: String,
    pub primary: bool,
}

impl User {
    /// Whether this stored user is the one `new_user` describes, so a retried
    /// CreateUser may return it: the same external id, name, email and
    /// subtenant (a user placed under another subtenant, or under none, is
    /// not the one asked for).
    pub fn matches(&self, new_user: &NewUser) -> bool {
        self.external_id == new_user.external_id.as_str()
            && self.subtenant == new_user.subtenant
            && self.given_name == new_user.name.given_name.as_str()
            && self.family_name == new_user.name.family_name.as_str()
            && self.emails.iter().any(|email| {
                email
                    .value
                    .eq_ignore_ascii_case(new_user.email.value.as_str())
            })
    }
}

/// The provider's id for one of a user's bank connections, such as
/// Moneyhub's `<bank ref>:<uuid>`. One URL path segment, as [`UserId`] is:
/// URL-safe characters and ':', never `.` or `..`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionId(String);

const MAX_CONNECTION_ID_LEN: usize = 128;

impl ConnectionId {
    pub fn parse(field: &str, value: &str) -> Result<Self, ValidationError> {
        if value.is_empty() || value.len() > MAX_CONNECTION_ID_LEN {
            return Err(ValidationError::new(
                field,
                format!("must be 1 to {MAX_CONNECTION_ID_LEN} characters"),
            ));
        }
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | ':');
        if !value.chars().all(allowed) {
            return Err(ValidationError::new(
                field,
                "may contain only letters, digits, '-', '_', '.', '~' and ':'",
            ));
        }
        if value == "." || value == ".." {
            return Err(ValidationError::new(
                field,
                "must be one URL path segment, not \".\" or \"..\"",
            ));
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One of a user's bank connections, as the provider reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub id: String,
    pub name: String,
    /// `api`, `legacy`, `test`, …
    pub kind: String,
    /// `ok` or `error`.
    pub status: String,
    /// Why the connection needs attention; `None` when it is fine.
    pub error: Option<String>,
    pub account_ids: Vec<String>,
    pub connected: Option<OffsetDateTime>,
    pub updated: Option<OffsetDateTime>,
    pub expires: Option<OffsetDateTime>,
}

/// An access token as issued by the provider. The token value is a bearer
/// secret, so `Debug` never prints it.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessToken {
    pub access_token: String,
    pub token_type: String,
    /// When the provider stops accepting the token, in Unix seconds.
    pub expires_at: i64,
    pub scopes: Vec<String>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("access_token", &"[REDACTED]")
            .field("token_type", &self.token_type)
            .field("expires_at", &self.expires_at)
            .field("scopes", &self.scopes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_sets_ignore_order_and_duplicates() {
        let a = ScopeSet::parse("scopes", &["b", "a", "a"]).unwrap();
        let b = ScopeSet::parse("scopes", &["a", "b"]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_space_separated(), "a b");
    }

    #[test]
    fn scopes_follow_rfc_6749_grammar() {
        assert!(Scope::parse("scopes", "transactions:read:all").is_ok());
        for bad in ["", "a b", "a\"b", "a\\b", "é"] {
            assert!(Scope::parse("scopes", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn emails_need_a_local_part_and_a_dotted_domain() {
        for good in ["alex@example.com", "a.b+tag@sub.example.co.uk"] {
            assert!(
                EmailAddress::parse("email", good).is_ok(),
                "{good} rejected"
            );
        }
        for bad in [
            "alex",
            "@example.com",
            "alex@",
            "alex@localhost",
            "a lex@example.com",
            "alex@exa mple.com",
            "alex@-example.com",
            "a..b@example.com",
        ] {
            assert!(EmailAddress::parse("email", bad).is_err(), "{bad} accepted");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(EmailAddress::parse("email", &long).is_err());
    }

    #[test]
    fn user_ids_are_url_safe_and_bounded() {
        assert!(UserId::parse("user_id", "66b317a3b9e65500465bed71").is_ok());
        assert!(UserId::parse("user_id", "...").is_ok(), "not a dot segment");
        assert!(UserId::parse("user_id", "scim").is_ok());
        assert!(UserId::parse("user_id", "x.scimx").is_ok());
        for bad in [
            "", "../admin", "a/b", "a b", "a?b=c", ".", "..", ".scim", "x.scim", "x.SCIM",
        ] {
            assert!(UserId::parse("user_id", bad).is_err(), "{bad:?} accepted");
        }
        assert!(UserId::parse("user_id", &"a".repeat(129)).is_err());
    }

    #[test]
    fn external_ids_are_one_to_128_characters() {
        assert!(ExternalId::parse("external_id", &"é".repeat(128)).is_ok());
        assert!(ExternalId::parse("external_id", &"a".repeat(129)).is_err());
        assert!(ExternalId::parse("external_id", "").is_err());
        assert!(ExternalId::parse("external_id", "a\nb").is_err());
    }

    #[test]
    fn access_token_debug_hides_the_token() {
        let token = AccessToken {
            access_token: "secret-value".into(),
            token_type: "Bearer".into(),
            expires_at: 0,
            scopes: vec![],
        };
        assert!(!format!("{token:?}").contains("secret-value"));
    }

    proptest::proptest! {
        /// Any string a caller sends either validates into a value within
        /// its bounds or is refused naming the field; nothing panics.
        #[test]
        fn validators_accept_only_what_they_promise(value in ".{0,300}") {
            if let Ok(id) = UserId::parse("user_id", &value) {
                proptest::prop_assert!(id.as_str().len() <= MAX_USER_ID_LEN);
                proptest::prop_assert!(!id.as_str().contains('/'));
            }
            if let Ok(id) = ExternalId::parse("external_id", &value) {
                proptest::prop_assert!(id.as_str().chars().count() <= MAX_EXTERNAL_ID_LEN);
            }
            if let Ok(email) = EmailAddress::parse("email", &value) {
                proptest::prop_assert!(email.as_str().len() <= MAX_EMAIL_LEN);
                proptest::prop_assert!(email.as_str().contains('@'));
            }
            if let Ok(scope) = Scope::parse("scopes", &value) {
                proptest::prop_assert!(!scope.as_str().contains(' '));
            }
            for error in [
                opaque_value("code", &value, 64).err(),
                code_verifier("code_verifier", &value).err(),
                redirect_uri("redirect_uri", &value).err(),
                NamePart::parse("given_name", &value).err(),
            ]
            .into_iter()
            .flatten()
            {
                proptest::prop_assert!(!error.field.is_empty());
            }
        }

        #[test]
        fn scope_sets_are_order_free(scopes in proptest::collection::vec("[a-z:._]{1,12}", 1..8)) {
            let mut reversed = scopes.clone();
            reversed.reverse();
            let a = ScopeSet::parse("scopes", &scopes);
            let b = ScopeSet::parse("scopes", &reversed);
            proptest::prop_assert_eq!(a.ok(), b.ok());
        }
    }
}
