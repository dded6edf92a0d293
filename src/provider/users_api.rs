//! Moneyhub's users API on its identity host (`{identity}/users`): deleting
//! a user, and listing and removing a user's bank connections, each with a
//! client-credentials token (`user:delete`, `user:read`), as Moneyhub's Node
//! client calls them. Answers are read as that client reads them: lists in
//! a `{"data": [...]}` envelope, errors as `{"code", "message"}`.

use reqwest::header::{ACCEPT, AUTHORIZATION};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

use super::ProviderError;
use super::http::{Answer, Upstream};
use super::resilience::Replay;
use crate::domain::{Connection, ConnectionId, UserId};

/// The scope Moneyhub requires to read users and their connections.
pub const USER_READ_SCOPE: &str = "user:read";
/// The scope Moneyhub requires to delete users and their connections.
pub const USER_DELETE_SCOPE: &str = "user:delete";

/// One connection as Moneyhub's users API reports it (its client's
/// `UserConnection`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionBody {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub connected_on: Option<String>,
    #[serde(default)]
    pub last_updated: Option<String>,
    #[serde(default)]
    pub expires_at: Option<String>,
    #[serde(default)]
    pub account_ids: Vec<String>,
    #[serde(default)]
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The envelope of a list answer.
#[derive(Deserialize)]
struct DataEnvelope {
    data: Vec<ConnectionBody>,
}

/// The error body of Moneyhub's APIs.
#[derive(Deserialize, Default)]
struct ErrorBody {
    code: Option<String>,
    message: Option<String>,
}

impl From<ConnectionBody> for Connection {
    fn from(body: ConnectionBody) -> Self {
        let time = |value: Option<String>| {
            value.and_then(|value| OffsetDateTime::parse(&value, &Rfc3339).ok())
        };
        Self {
            id: body.id,
            name: body.name,
            kind: body.kind,
            status: body.status,
            error: body.error.filter(|error| !error.is_empty()),
            account_ids: body.account_ids,
            connected: time(body.connected_on),
            updated: time(body.last_updated),
            expires: time(body.expires_at),
        }
    }
}

/// A client of one provider's users API.
#[derive(Debug)]
pub struct UsersApi {
    pub(super) upstream: Upstream,
    /// The users base, such as `https://identity.moneyhub.co.uk/users`.
    pub(super) base: Url,
}

impl UsersApi {
    /// `DELETE /users/{id}`. Not replayed after an ambiguous failure: a
    /// second DELETE of a user the first removed would answer 404.
    pub async fn delete_user(&self, bearer: &str, id: &UserId) -> Result<(), ProviderError> {
        let url = &self.url(&[id.as_str()])?;
        self.send(bearer, Replay::OnlyUnprocessed, || {
            self.upstream.client.delete(url.clone())
        })
        .await
        .map(drop)
    }

    /// `GET /users/{id}/connections`.
    pub async fn connections(
        &self,
        bearer: &str,
        id: &UserId,
    ) -> Result<Vec<Connection>, ProviderError> {
        let url = &self.url(&[id.as_str(), "connections"])?;
        let answer = self
            .send(bearer, Replay::Safe, || {
                self.upstream.client.get(url.clone())
            })
            .await?;
        let body: serde_json::Value = answer.json()?;
        let envelope: DataEnvelope = serde_json::from_value(body).map_err(|_| {
            answer.misdirected(
                "users API",
                "with something other than a list of connections",
            )
        })?;
        Ok(envelope.data.into_iter().map(Connection::from).collect())
    }

    /// `DELETE /users/{id}/connection/{connection_id}` (singular, as
    /// Moneyhub's client spells it).
    pub async fn delete_connection(
        &self,
        bearer: &str,
        id: &UserId,
        connection: &ConnectionId,
    ) -> Result<(), ProviderError> {
        let url = &self.url(&[id.as_str(), "connection", connection.as_str()])?;
        self.send(bearer, Replay::OnlyUnprocessed, || {
            self.upstream.client.delete(url.clone())
        })
        .await
        .map(drop)
    }

    /// `{base}/{segments…}`, or an error (nothing sent) unless each segment
    /// stays exactly one path segment.
    fn url(&self, segments: &[&str]) -> Result<Url, ProviderError> {
        path_under(&self.base, segments).ok_or_else(|| ProviderError::Misdirected {
            reason: "the ids do not address one resource of the users API".into(),
            status: None,
        })
    }

    /// Sends one request; a 2xx answer is returned for the caller to read.
    async fn send(
        &self,
        bearer: &str,
        replay: Replay,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Answer, ProviderError> {
        let request = &request;
        self.upstream
            .call(replay, move || async move {
                let request = request()
                    .header(AUTHORIZATION, format!("Bearer {bearer}"))
                    .header(ACCEPT, "application/json");
                let answer = self.upstream.send(request, "users").await?;
                check(answer)
            })
            .await
    }
}

/// The answer when it is a success, else the error it reports.
fn check(answer: Answer) -> Result<Answer, ProviderError> {
    if answer.is_success() {
        return Ok(answer);
    }
    if answer.status == 429 {
        return Err(answer.rate_limited(None));
    }
    if answer.status == 408 || answer.status >= 500 {
        return Err(answer.unexpected());
    }
    let error: ErrorBody = serde_json::from_slice(&answer.body).unwrap_or_default();
    Err(ProviderError::UsersApi {
        status: answer.status,
        code: error.code,
        message: error.message,
    })
}

/// `base` with `segments` appended, or `None` unless each segment is
/// unreserved characters (or ':') and the built path is the base's followed
/// by exactly those segments: a URL resolves dot segments and a server
/// decodes `%2e%2e`, so no id may steer a request to another resource.
pub(super) fn path_under(base: &Url, segments: &[&str]) -> Option<Url> {
    let plain = |s: &&str| {
        !s.is_empty()
            && *s != "."
            && *s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | ':'))
    };
    if !segments.iter().all(plain) {
        return None;
    }
    let mut url = base.clone();
    url.path_segments_mut()
        .ok()?
        .pop_if_empty()
        .extend(segments.iter().copied());
    let expected = format!(
        "{}/{}",
        base.path().trim_end_matches('/'),
        segments.join("/")
    );
    (url.path() == expected).then_some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_address_exactly_the_resource_asked_for() {
        let base: Url = "https://identity.example/users".parse().unwrap();
        assert_eq!(
            path_under(&base, &["u1", "connection", "abc:0f-1"])
                .unwrap()
                .as_str(),
            "https://identity.example/users/u1/connection/abc:0f-1"
        );
        let slash: Url = "https://identity.example/users/".parse().unwrap();
        assert_eq!(
            path_under(&slash, &["u1"]).unwrap().as_str(),
            "https://identity.example/users/u1"
        );
        for hostile in [".", "..", "", "a/b", "a?b", "a#b", "%2e%2e", "a b"] {
            assert_eq!(path_under(&base, &["u1", hostile]), None, "{hostile:?}");
        }
    }

    #[test]
    fn connections_are_read_in_moneyhubs_shape() {
        let body: ConnectionBody = serde_json::from_value(serde_json::json!({
            "id": "1ffe704d39629a929c8e293880fb449a:3a7e7c1e",
            "name": "Mock Bank",
            "type": "api",
            "connectedOn": "2024-08-07T06:43:47.000Z",
            "lastUpdated": "not a date",
            "accountIds": ["a1", "a2"],
            "status": "error",
            "error": "resync",
        }))
        .unwrap();
        let connection = Connection::from(body);
        assert_eq!(connection.kind, "api");
        assert_eq!(connection.error.as_deref(), Some("resync"));
        assert_eq!(connection.account_ids, ["a1", "a2"]);
        assert_eq!(
            connection.connected.map(|t| t.unix_timestamp()),
            Some(1_723_013_027)
        );
        assert_eq!(connection.updated, None, "an unreadable date is left out");
        assert_eq!(connection.expires, None);
    }
}
