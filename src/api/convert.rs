//! Proto messages to validated domain types and back. Validation errors name
//! the request field as the caller wrote it.

use time::OffsetDateTime;

use crate::domain::{
    AccessToken, Connection, Email, EmailAddress, ExternalId, NamePart, NewUser, PersonName,
    Subtenant, User, ValidationError, bounded_text,
};
use crate::proto::v1 as pb;
use crate::provider::{Consent, Purpose, permissions, provider_id};
use crate::service::TokenSet;

const MAX_SUBTENANT_FIELD_LEN: usize = 256;

pub fn new_user(request: &pb::CreateUserRequest) -> Result<NewUser, ValidationError> {
    let external_id = ExternalId::parse("external_id", &request.external_id)?;
    let name = match &request.name {
        Some(name) => PersonName {
            given_name: NamePart::parse("name.given_name", &name.given_name)?,
            family_name: NamePart::parse("name.family_name", &name.family_name)?,
        },
        None => PersonName::default(),
    };
    let [email] = request.emails.as_slice() else {
        return Err(ValidationError::new(
            "emails",
            format!(
                "exactly one email is required, got {}",
                request.emails.len()
            ),
        ));
    };
    let email = Email {
        value: EmailAddress::parse("emails[0].value", &email.value)?,
        primary: email.primary,
    };
    let subtenant = request.subtenant.as_ref().map(subtenant).transpose()?;
    Ok(NewUser {
        external_id,
        name,
        email,
        subtenant,
    })
}

fn subtenant(subtenant: &pb::Subtenant) -> Result<Subtenant, ValidationError> {
    let bounded = |field: &str, value: &str| bounded_text(field, value, 1, MAX_SUBTENANT_FIELD_LEN);
    Ok(Subtenant {
        name: bounded("subtenant.name", &subtenant.name)?,
        provider_id: bounded("subtenant.provider_id", &subtenant.provider_id)?,
    })
}

impl From<User> for pb::User {
    fn from(user: User) -> Self {
        Self {
            id: user.id,
            external_id: user.external_id,
            name: Some(pb::PersonName {
                given_name: user.given_name,
                family_name: user.family_name,
            }),
            emails: user
                .emails
                .into_iter()
                .map(|email| pb::Email {
                    value: email.value,
                    primary: email.primary,
                })
                .collect(),
            create_time: user.created.map(timestamp),
            subtenant: user.subtenant.map(|s| pb::Subtenant {
                name: s.name,
                provider_id: s.provider_id,
            }),
        }
    }
}

impl From<AccessToken> for pb::AccessToken {
    fn from(token: AccessToken) -> Self {
        Self {
            access_token: token.access_token,
            token_type: token.token_type,
            expire_time: Some(prost_types::Timestamp {
                seconds: token.expires_at,
                nanos: 0,
            }),
            scopes: token.scopes,
        }
    }
}

impl From<TokenSet> for pb::TokenSet {
    fn from(set: TokenSet) -> Self {
        let access = pb::AccessToken::from(set.token);
        Self {
            access_token: access.access_token,
            id_token: set.id_token.unwrap_or_default(),
            refresh_token: set.refresh_token.unwrap_or_default(),
            token_type: access.token_type,
            scopes: access.scopes,
            expire_time: access.expire_time,
            id_token_claims: set.claims.map(|claims| pb::IdTokenClaims {
                sub: claims.sub,
                connection_id: claims.connection_id.unwrap_or_default(),
                auth_time: claims
                    .auth_time
                    .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
            }),
        }
    }
}

impl From<Connection> for pb::Connection {
    fn from(connection: Connection) -> Self {
        Self {
            id: connection.id,
            name: connection.name,
            r#type: connection.kind,
            status: connection.status,
            error: connection.error.unwrap_or_default(),
            account_ids: connection.account_ids,
            connect_time: connection.connected.map(timestamp),
            update_time: connection.updated.map(timestamp),
            expire_time: connection.expires.map(timestamp),
        }
    }
}

fn timestamp(at: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.unix_timestamp(),
        nanos: at.nanosecond() as i32,
    }
}

/// The purpose oneof of CreateAuthorizationUrl, each field validated and
/// named as the request spells it (`connect_bank.bank_id`, …).
pub fn purpose(request: &pb::CreateAuthorizationUrlRequest) -> Result<Purpose, ValidationError> {
    use pb::create_authorization_url_request::Purpose as P;
    let connection = |field: &str, id: &str| provider_id(&format!("{field}.connection_id"), id);
    match &request.purpose {
        None => Err(ValidationError::new(
            "purpose",
            "set one of connect_bank, reauthorize_connection, refresh_connection, reconsent_connection",
        )),
        Some(P::ConnectBank(connect)) => Ok(Purpose::Connect {
            bank_id: match connect.bank_id.as_str() {
                "" => None,
                id => Some(provider_id("connect_bank.bank_id", id)?),
            },
            consent: connect
                .consent
                .as_ref()
                .map(|consent| self::consent("connect_bank.consent", consent))
                .transpose()?,
            async_sync: connect.async_sync,
        }),
        Some(P::ReauthorizeConnection(reauthorize)) => Ok(Purpose::Reauthorize {
            connection_id: connection("reauthorize_connection", &reauthorize.connection_id)?,
        }),
        Some(P::RefreshConnection(refresh)) => Ok(Purpose::Refresh {
            connection_id: connection("refresh_connection", &refresh.connection_id)?,
        }),
        Some(P::ReconsentConnection(reconsent)) => Ok(Purpose::Reconsent {
            connection_id: connection("reconsent_connection", &reconsent.connection_id)?,
            consent_expires_at: reconsent
                .consent_expire_time
                .as_ref()
                .map(|at| unix_seconds("reconsent_connection.consent_expire_time", at))
                .transpose()?,
        }),
    }
}

fn consent(field: &str, consent: &pb::Consent) -> Result<Consent, ValidationError> {
    let at = |name: &str, value: &Option<prost_types::Timestamp>| {
        value
            .as_ref()
            .map(|at| unix_seconds(&format!("{field}.{name}"), at))
            .transpose()
    };
    let action = pb::PermissionsAction::try_from(consent.permissions_action).map_err(|_| {
        ValidationError::new(
            format!("{field}.permissions_action"),
            "is not a PermissionsAction",
        )
    })?;
    let permissions = permissions(&format!("{field}.permissions"), &consent.permissions)?;
    if permissions.is_empty() && action != pb::PermissionsAction::Unspecified {
        return Err(ValidationError::new(
            format!("{field}.permissions_action"),
            "needs permissions to combine",
        ));
    }
    Ok(Consent {
        expires_at: at("expire_time", &consent.expire_time)?,
        transactions_from: at("transactions_from_time", &consent.transactions_from_time)?,
        permissions,
        replace: action == pb::PermissionsAction::Replace,
    })
}

/// A timestamp between 1970 and 9999, as whole seconds.
fn unix_seconds(field: &str, at: &prost_types::Timestamp) -> Result<i64, ValidationError> {
    const YEAR_10000: i64 = 253_402_300_800;
    if (0..YEAR_10000).contains(&at.seconds) && (0..1_000_000_000).contains(&at.nanos) {
        Ok(at.seconds)
    } else {
        Err(ValidationError::new(field, "must be between 1970 and 9999"))
    }
}
