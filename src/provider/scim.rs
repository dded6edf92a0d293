//! SCIM 2.0 users (RFC 7643/7644), as Moneyhub's `/scim/users` serves them.
//! Requests carry the core schema and `userName` so any SCIM server accepts
//! them; Moneyhub's subtenant travels in its own schema extension.

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use url::Url;

use super::ProviderError;
use super::http::{Answer, Upstream};
use super::resilience::Replay;
use crate::domain::{ExternalId, NewUser, Subtenant, User, UserEmail, UserId};

const CORE_USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const SUBTENANT_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:moneyhub:2.0:Subtenant";

#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScimName {
    #[serde(default)]
    pub given_name: String,
    #[serde(default)]
    pub family_name: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ScimEmail {
    pub value: String,
    #[serde(default)]
    pub primary: bool,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScimSubtenant {
    pub name: String,
    pub provider_id: String,
}

/// The body of `POST /scim/users`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScimUserRequest {
    pub schemas: Vec<String>,
    pub user_name: String,
    pub external_id: String,
    pub name: ScimName,
    pub emails: Vec<ScimEmail>,
    #[serde(rename = "urn:ietf:params:scim:schemas:extension:moneyhub:2.0:Subtenant")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subtenant: Option<ScimSubtenant>,
}

#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScimMeta {
    pub resource_type: Option<String>,
    pub created: Option<String>,
}

/// A SCIM user resource as the server returns it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScimUser {
    pub id: String,
    #[serde(default)]
    pub external_id: String,
    #[serde(default)]
    pub meta: ScimMeta,
    #[serde(default)]
    pub name: ScimName,
    #[serde(default)]
    pub emails: Vec<ScimEmail>,
    #[serde(rename = "urn:ietf:params:scim:schemas:extension:moneyhub:2.0:Subtenant")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtenant: Option<ScimSubtenant>,
}

/// RFC 7644 §3.12 error response.
#[derive(Debug, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScimError {
    pub scim_type: Option<String>,
    pub detail: Option<String>,
}

/// RFC 7644 §3.4.2 ListResponse. `Resources` may be absent when empty.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListResponse {
    total_results: u64,
    start_index: Option<u64>,
    #[serde(default, rename = "Resources")]
    resources: Vec<ScimUser>,
}

/// One page of users from `GET /users?startIndex=&count=`.
#[derive(Debug)]
pub struct UserPage {
    pub users: Vec<User>,
    /// The 1-based `startIndex` of the next page; `None` on the last one.
    pub next_start_index: Option<u32>,
}

/// The SCIM filter for one `externalId`. The value is written as a JSON
/// string, as RFC 7644 §3.4.2.2 defines `compValue`, so quotes, backslashes
/// and control characters are escaped and a hostile value stays one value.
pub fn external_id_filter(external_id: &ExternalId) -> String {
    let value = serde_json::Value::String(external_id.as_str().to_owned());
    format!("externalId eq {value}")
}

impl ScimUserRequest {
    pub fn new(user: &NewUser) -> Self {
        let mut schemas = vec![CORE_USER_SCHEMA.to_owned()];
        if user.subtenant.is_some() {
            schemas.push(SUBTENANT_SCHEMA.to_owned());
        }
        Self {
            schemas,
            user_name: user.external_id.as_str().to_owned(),
            external_id: user.external_id.as_str().to_owned(),
            name: ScimName {
                given_name: user.name.given_name.as_str().to_owned(),
                family_name: user.name.family_name.as_str().to_owned(),
            },
            emails: vec![ScimEmail {
                value: user.email.value.as_str().to_owned(),
                primary: user.email.primary,
            }],
            subtenant: user.subtenant.as_ref().map(|s| ScimSubtenant {
                name: s.name.clone(),
                provider_id: s.provider_id.clone(),
            }),
        }
    }
}

impl From<ScimUser> for User {
    fn from(user: ScimUser) -> Self {
        Self {
            id: user.id,
            external_id: user.external_id,
            given_name: user.name.given_name,
            family_name: user.name.family_name,
            emails: user
                .emails
                .into_iter()
                .map(|e| UserEmail {
                    value: e.value,
                    primary: e.primary,
                })
                .collect(),
            created: user
                .meta
                .created
                .and_then(|created| OffsetDateTime::parse(&created, &Rfc3339).ok()),
            subtenant: user.subtenant.map(|s| Subtenant {
                name: s.name,
                provider_id: s.provider_id,
            }),
        }
    }
}

/// A client of one provider's SCIM users endpoint.
#[derive(Debug)]
pub struct ScimClient {
    pub(super) upstream: Upstream,
    /// The SCIM base, such as `https://identity.moneyhub.co.uk/scim`.
    pub(super) base: Url,
    pub(super) content_type: String,
}

impl ScimClient {
    /// Not replayed after an ambiguous failure: the provider may have
    /// created the user already (a retried CreateUser finds it by external id).
    pub async fn create_user(&self, bearer: &str, user: &NewUser) -> Result<User, ProviderError> {
        let body = serde_json::to_vec(&ScimUserRequest::new(user))
            .map_err(|_| ProviderError::unavailable("cannot encode the SCIM request"))?;
        let (body, url) = (&body, &collection_url(&self.base));
        self.send(bearer, Replay::OnlyUnprocessed, None, move || {
            self.upstream
                .client
                .post(url.clone())
                .header(CONTENT_TYPE, &self.content_type)
                .body(body.clone())
        })
        .await
    }

    pub async fn get_user(&self, bearer: &str, id: &UserId) -> Result<User, ProviderError> {
        let url = &user_url(&self.base, id.as_str()).ok_or_else(|| ProviderError::Misdirected {
            reason: format!("user id {id} does not address one SCIM user"),
            status: None,
        })?;
        self.send(bearer, Replay::Safe, Some(id), move || {
            self.upstream.client.get(url.clone())
        })
        .await
    }

    /// `DELETE /users/{id}`. Not replayed after an ambiguous failure: a
    /// second DELETE of a user the first removed would answer 404.
    pub async fn delete_user(&self, bearer: &str, id: &UserId) -> Result<(), ProviderError> {
        let url = &user_url(&self.base, id.as_str()).ok_or_else(|| ProviderError::Misdirected {
            reason: format!("user id {id} does not address one SCIM user"),
            status: None,
        })?;
        self.exchange(bearer, Replay::OnlyUnprocessed, move || {
            self.upstream.client.delete(url.clone())
        })
        .await
        .map(drop)
    }

    /// One page of users from the 1-based `start_index`, at most `count`,
    /// only those with `external_id` when given. Read defensively: a page
    /// larger than asked, starting elsewhere, or holding users the filter
    /// excludes is not served as asked (the server ignored a parameter).
    pub async fn list_users(
        &self,
        bearer: &str,
        start_index: u32,
        count: u32,
        external_id: Option<&ExternalId>,
    ) -> Result<UserPage, ProviderError> {
        let mut url = collection_url(&self.base);
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("startIndex", &start_index.to_string())
                .append_pair("count", &count.to_string());
            if let Some(external_id) = external_id {
                query.append_pair("filter", &external_id_filter(external_id));
            }
        }
        let url = &url;
        let answer = self
            .exchange(bearer, Replay::Safe, move || {
                self.upstream.client.get(url.clone())
            })
            .await?;
        let body: serde_json::Value = answer.json()?;
        let misdirected = |what: &str| answer.misdirected("SCIM endpoint", what);
        let list: ListResponse = serde_json::from_value(body)
            .map_err(|_| misdirected("with something other than a list of users"))?;
        if list.resources.len() > count as usize {
            return Err(misdirected("with more users than asked for"));
        }
        if list
            .start_index
            .is_some_and(|start| start != u64::from(start_index))
        {
            return Err(misdirected("with a page starting elsewhere than asked"));
        }
        if let Some(external_id) = external_id {
            if list
                .resources
                .iter()
                .any(|user| user.external_id != external_id.as_str())
            {
                return Err(misdirected("with users the filter excludes"));
            }
        }
        let seen = u64::from(start_index) - 1 + list.resources.len() as u64;
        let next_start_index = (!list.resources.is_empty() && seen < list.total_results)
            .then(|| u32::try_from(seen + 1).ok())
            .flatten();
        Ok(UserPage {
            users: list.resources.into_iter().map(User::from).collect(),
            next_start_index,
        })
    }

    /// Sends a request and returns its 2xx answer, or the error it reports.
    async fn exchange(
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
                    .header(ACCEPT, "application/scim+json, application/json");
                let answer = self.upstream.send(request, "scim").await?;
                if answer.is_success() {
                    Ok(answer)
                } else {
                    Err(Self::failure(&answer))
                }
            })
            .await
    }

    /// Sends a request answered by one user: `asked`, when its id is known.
    async fn send(
        &self,
        bearer: &str,
        replay: Replay,
        asked: Option<&UserId>,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<User, ProviderError> {
        let request = &request;
        self.upstream
            .call(replay, move || async move {
                let request = request()
                    .header(AUTHORIZATION, format!("Bearer {bearer}"))
                    .header(ACCEPT, "application/scim+json, application/json");
                let answer = self.upstream.send(request, "scim").await?;
                Self::read(&answer, asked)
            })
            .await
    }

    fn read(answer: &Answer, asked: Option<&UserId>) -> Result<User, ProviderError> {
        if answer.is_success() {
            // A body that is not JSON says the provider is failing; JSON
            // that is not the user asked for (a ListResponse, another
            // user) says the request reached the wrong resource.
            let body: serde_json::Value = answer.json()?;
            return serde_json::from_value::<ScimUser>(body)
                .ok()
                .filter(|user| asked.is_none_or(|id| user.id == id.as_str()))
                .map(User::from)
                .ok_or_else(|| {
                    answer.misdirected(
                        "SCIM endpoint",
                        "with something other than the user asked for",
                    )
                });
        }
        Err(Self::failure(answer))
    }

    /// The error a non-2xx answer reports.
    fn failure(answer: &Answer) -> ProviderError {
        if answer.status == 429 {
            return answer.rate_limited(None);
        }
        // 408: the provider tired of waiting for the request, like a timeout.
        if answer.status == 408 || answer.status >= 500 {
            return answer.unexpected();
        }
        let error: ScimError = serde_json::from_slice(&answer.body).unwrap_or_default();
        ProviderError::Scim {
            status: answer.status,
            scim_type: error.scim_type,
            detail: error.detail,
        }
    }
}

/// The users collection, `{base}/users`.
fn collection_url(base: &Url) -> Url {
    let mut url = base.clone();
    if let Ok(mut segments) = url.path_segments_mut() {
        segments.pop_if_empty().push("users");
    }
    url
}

/// `{base}/users/{id}`, or `None` unless the built path ends in exactly
/// that segment: a URL resolves dot segments (`..` would address the
/// collection), so no id may steer a request to another resource. Nor may
/// an id end in `.scim`, a format suffix a SCIM server strips (RFC 7644
/// §3.8): `.scim` would address the collection too.
fn user_url(base: &Url, id: &str) -> Option<Url> {
    if crate::domain::has_scim_format_suffix(id) {
        return None;
    }
    let collection = collection_url(base);
    let mut url = collection.clone();
    url.path_segments_mut().ok()?.push(id);
    let tail = url.path().strip_prefix(collection.path())?;
    (!id.is_empty() && tail.strip_prefix('/') == Some(id)).then_some(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_created_is_read_in_every_shape_servers_send() {
        // Moneyhub's documented response (milliseconds), scim2-server's
        // (microseconds), the sandbox's (whole seconds), an offset.
        for (created, unix, nanos) in [
            ("2024-08-07T06:43:47.000Z", 1_723_013_027, 0),
            ("2026-12-02T06:40:54.432570Z", 1_796_193_654, 432_570_000),
            ("2024-08-07T06:43:47Z", 1_723_013_027, 0),
            ("2024-08-07T08:43:47+02:00", 1_723_013_027, 0),
        ] {
            let user: ScimUser = serde_json::from_value(serde_json::json!({
                "id": "66b317a3b9e65500465bed71",
                "meta": {"resourceType": "User", "created": created},
            }))
            .unwrap();
            let created_at = User::from(user).created.expect(created);
            assert_eq!(
                (created_at.unix_timestamp(), created_at.nanosecond()),
                (unix, nanos),
                "{created}"
            );
        }
    }

    #[test]
    fn a_hostile_external_id_stays_one_filter_value() {
        for (external_id, filter) in [
            ("customer-1", r#"externalId eq "customer-1""#),
            (
                r#"x" or userName pr or externalId eq "y"#,
                r#"externalId eq "x\" or userName pr or externalId eq \"y""#,
            ),
            (r"back\slash", r#"externalId eq "back\\slash""#),
            ("ünïcødé ✓", r#"externalId eq "ünïcødé ✓""#),
        ] {
            let external_id = ExternalId::parse("external_id", external_id).unwrap();
            assert_eq!(external_id_filter(&external_id), filter);
        }
    }

    #[test]
    fn a_user_url_addresses_exactly_one_user() {
        let base: Url = "https://identity.example/scim/".parse().unwrap();
        assert_eq!(
            user_url(&base, "66b3-a_b~c.d").unwrap().as_str(),
            "https://identity.example/scim/users/66b3-a_b~c.d"
        );
        for hostile in [
            ".", "..", "a/b", "a?b", "a#b", "%2e%2e", "", ".scim", "x.scim", "x.Scim",
        ] {
            assert_eq!(user_url(&base, hostile), None, "{hostile:?}");
        }
    }
}
