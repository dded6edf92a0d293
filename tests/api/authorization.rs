//! CreateAuthorizationUrl and ExchangeAuthorizationCode by state, against
//! the sandbox over real HTTP: pushed (PAR) and signed requests, the
//! state's single use, per-caller states, Redis sharing and outages.

use bankauth::config::{AccessConfig, CallerConfig, ClientAuthMethod, ProviderKind};
use bankauth::proto::v1 as pb;
use bankauth::sandbox::{DEFAULT_REDIRECT_URI, IdTokenFault, SandboxOptions};
use pb::create_authorization_url_request::Purpose;
use tonic::{Code, Request};

use crate::helpers::{
    RedisServer, TestApp, error_info, follow_authorization_url, sha256_hex, spawn_app,
    spawn_app_with, start_upstream, start_upstream_with, use_redis,
};

fn connect(user_id: &str, bank_id: &str) -> pb::CreateAuthorizationUrlRequest {
    pb::CreateAuthorizationUrlRequest {
        provider: String::new(),
        user_id: user_id.into(),
        redirect_uri: DEFAULT_REDIRECT_URI.into(),
        purpose: Some(Purpose::ConnectBank(pb::ConnectBank {
            bank_id: bank_id.into(),
            consent: None,
            async_sync: false,
        })),
    }
}

fn by_state(state: &str, code: &str) -> pb::ExchangeAuthorizationCodeRequest {
    pb::ExchangeAuthorizationCodeRequest {
        state: state.into(),
        code: code.into(),
        ..Default::default()
    }
}

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(error_info(status).metadata["field"], field, "{status:?}");
}

/// CreateAuthorizationUrl, then the browser at the provider: the callback's
/// `state` and `code`.
async fn authorize(
    app: &mut TestApp,
    request: pb::CreateAuthorizationUrlRequest,
) -> (pb::CreateAuthorizationUrlResponse, String) {
    let created = app
        .client
        .create_authorization_url(request)
        .await
        .expect("CreateAuthorizationUrl succeeds")
        .into_inner();
    let callback = follow_authorization_url(&created.url).await;
    assert_eq!(callback.get("state"), Some(&created.state), "{callback:?}");
    let code = callback.get("code").cloned().expect("a code");
    (created, code)
}

#[tokio::test]
async fn a_user_connects_a_bank_through_a_pushed_request_and_the_state_is_spent_once() {
    let mut app = spawn_app().await;
    let user = app.create_user("connect-1").await;
    let (created, code) = authorize(&mut app, connect(&user, "1ffe704d")).await;

    // Pushed: the URL carries only the client and the request_uri.
    assert_eq!(app.sandbox().par_requests(), 1);
    let url = url::Url::parse(&created.url).unwrap();
    let params: Vec<String> = url
        .query_pairs()
        .map(|(name, _)| name.into_owned())
        .collect();
    assert_eq!(params, ["client_id", "request_uri"], "{}", created.url);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let expires = created.expire_time.unwrap().seconds;
    assert!(
        expires > now && expires <= now + 60,
        "the pushed request's 60 s: {expires}"
    );
    assert!(created.state.len() >= 43);

    let set = app
        .client
        .exchange_authorization_code(by_state(&created.state, &code))
        .await
        .expect("the exchange by state succeeds")
        .into_inner()
        .token_set
        .unwrap();
    let claims = set.id_token_claims.unwrap();
    assert_eq!(claims.sub, user);
    assert!(claims.connection_id.contains(':'), "{claims:?}");
    assert_eq!(set.scopes, ["id:1ffe704d", "openid"]);

    // The state is spent, whatever code comes with it.
    let (_, other_code) = authorize(&mut app, connect(&user, "")).await;
    let status = app
        .client
        .exchange_authorization_code(by_state(&created.state, &other_code))
        .await
        .unwrap_err();
    assert_invalid(&status, "state");
}

#[tokio::test]
async fn a_reauthorisation_names_the_connection_and_gets_it_back() {
    let mut app = spawn_app().await;
    let user = app.create_user("reauth-1").await;
    let mut request = connect(&user, "");
    request.purpose = Some(Purpose::ReauthorizeConnection(pb::ReauthorizeConnection {
        connection_id: "5e2f:01ab".into(),
    }));
    let (created, code) = authorize(&mut app, request).await;
    let set = app
        .client
        .exchange_authorization_code(by_state(&created.state, &code))
        .await
        .unwrap()
        .into_inner()
        .token_set
        .unwrap();
    assert_eq!(set.id_token_claims.unwrap().connection_id, "5e2f:01ab");
    assert_eq!(set.scopes, ["openid", "reauth"]);
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field() {
    let mut app = spawn_app().await;
    let user = app.create_user("bad-input-1").await;
    let cases: Vec<(pb::CreateAuthorizationUrlRequest, &str)> = vec![
        (connect("..", ""), "user_id"),
        (connect("a\u{7}b", ""), "user_id"),
        (connect(&"u".repeat(10_000), ""), "user_id"),
        (connect(&user, "a/b"), "connect_bank.bank_id"),
        (
            pb::CreateAuthorizationUrlRequest {
                redirect_uri: "https://evil.example/callback".into(),
                ..connect(&user, "")
            },
            "redirect_uri",
        ),
        (
            pb::CreateAuthorizationUrlRequest {
                redirect_uri: "not a url".into(),
                ..connect(&user, "")
            },
            "redirect_uri",
        ),
        (
            pb::CreateAuthorizationUrlRequest {
                purpose: None,
                ..connect(&user, "")
            },
            "purpose",
        ),
        (
            pb::CreateAuthorizationUrlRequest {
                purpose: Some(Purpose::ReauthorizeConnection(Default::default())),
                ..connect(&user, "")
            },
            "reauthorize_connection.connection_id",
        ),
        (
            pb::CreateAuthorizationUrlRequest {
                purpose: Some(Purpose::ConnectBank(pb::ConnectBank {
                    consent: Some(pb::Consent {
                        permissions: vec!["ReadAccountsDetail".into(), "drop table".into()],
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
                ..connect(&user, "")
            },
            "connect_bank.consent.permissions[1]",
        ),
    ];
    for (request, field) in cases {
        let status = app
            .client
            .create_authorization_url(request)
            .await
            .unwrap_err();
        assert_invalid(&status, field);
    }
    assert_eq!(
        app.sandbox().par_requests(),
        0,
        "nothing invalid was pushed"
    );

    // Exchange by state: the remembered fields may not be given beside it.
    let (created, code) = authorize(&mut app, connect(&user, "")).await;
    for field in ["redirect_uri", "code_verifier", "nonce", "sub"] {
        let mut request = by_state(&created.state, &code);
        match field {
            "redirect_uri" => request.redirect_uri = DEFAULT_REDIRECT_URI.into(),
            "code_verifier" => request.code_verifier = "v".repeat(43),
            "nonce" => request.nonce = "n".into(),
            _ => request.sub = user.clone(),
        }
        let status = app
            .client
            .exchange_authorization_code(request)
            .await
            .unwrap_err();
        assert_invalid(&status, field);
    }
    for state in ["unknown-state", &"s".repeat(300), "s\u{1}"] {
        let status = app
            .client
            .exchange_authorization_code(by_state(state, &code))
            .await
            .unwrap_err();
        assert_invalid(&status, "state");
    }
    // None of that spent the state.
    app.client
        .exchange_authorization_code(by_state(&created.state, &code))
        .await
        .expect("the state is still usable");
}

#[tokio::test]
async fn a_provider_without_redirect_uris_makes_no_urls_and_says_which_key() {
    let mut app = spawn_app_with(start_upstream().await, |config| {
        for provider in config.providers.values_mut() {
            provider.redirect_uris.clear();
        }
    })
    .await;
    let status = app
        .client
        .create_authorization_url(connect("someone", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(error_info(&status).reason, "NOT_SUPPORTED_BY_PROVIDER");
    assert!(
        status.message().contains("providers.sandbox.redirect_uris"),
        "{status:?}"
    );
}

const ALICE_KEY: &str = "alice-key-3f1e0c9b";
const BOB_KEY: &str = "bob-key-77d2a0e4";
const EXCHANGER_KEY: &str = "exchanger-key-19ab4c";

fn caller(key: &str, rpcs: &[&str]) -> CallerConfig {
    CallerConfig {
        api_key_sha256: vec![sha256_hex(key)],
        client_cert_names: Vec::new(),
        rpcs: rpcs.iter().map(|rpc| rpc.to_string()).collect(),
        providers: vec!["*".to_owned()],
        scopes: vec!["*".to_owned()],
        requests_per_second: None,
        burst: None,
    }
}

fn with_key<T>(message: T, key: &str) -> Request<T> {
    let mut request = Request::new(message);
    let bearer = format!("Bearer {key}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    request
}

#[tokio::test]
async fn a_state_belongs_to_the_caller_that_made_it_and_policy_applies() {
    let upstream = start_upstream().await;
    let user = upstream.sandbox.seed_users(1).remove(0);
    let mut app = spawn_app_with(upstream, |config| {
        config.access = AccessConfig {
            allow_anonymous: false,
            callers: [
                ("alice".to_owned(), caller(ALICE_KEY, &["*"])),
                ("bob".to_owned(), caller(BOB_KEY, &["*"])),
                (
                    "exchanger".to_owned(),
                    caller(EXCHANGER_KEY, &["ExchangeAuthorizationCode"]),
                ),
            ]
            .into(),
        };
    })
    .await;
    let status = app
        .client
        .create_authorization_url(with_key(connect(&user, ""), EXCHANGER_KEY))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        error_info(&status).metadata["rpc"],
        "CreateAuthorizationUrl"
    );

    let created = app
        .client
        .create_authorization_url(with_key(connect(&user, ""), ALICE_KEY))
        .await
        .unwrap()
        .into_inner();
    let code = follow_authorization_url(&created.url).await["code"].clone();
    for key in [BOB_KEY, EXCHANGER_KEY] {
        let status = app
            .client
            .exchange_authorization_code(with_key(by_state(&created.state, &code), key))
            .await
            .unwrap_err();
        assert_invalid(&status, "state");
    }
    let set = app
        .client
        .exchange_authorization_code(with_key(by_state(&created.state, &code), ALICE_KEY))
        .await
        .expect("still usable by the caller that made it")
        .into_inner()
        .token_set
        .unwrap();
    assert_eq!(set.id_token_claims.unwrap().sub, user);
}

#[tokio::test]
async fn a_state_made_on_one_replica_is_exchanged_on_another_and_redis_holds_it_sealed() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let mut first = spawn_app_with(upstream.clone(), |config| use_redis(config, &redis)).await;
    let mut second = spawn_app_with(upstream.clone(), |config| use_redis(config, &redis)).await;
    let user = first.create_user("replicas-1").await;
    let (created, code) = authorize(&mut first, connect(&user, "")).await;

    // Read back raw: the key names no state, the value opens only sealed.
    let mut connection = redis.client().get_connection().unwrap();
    let names: Vec<String> = redis::cmd("KEYS")
        .arg("bankauth:*:authorization:*")
        .query(&mut connection)
        .unwrap();
    assert_eq!(names.len(), 1, "{names:?}");
    let all: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut connection).unwrap();
    assert!(
        all.iter().all(|name| !name.contains(&created.state)),
        "{all:?}"
    );
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(&names[0])
        .query(&mut connection)
        .unwrap();
    let text = String::from_utf8_lossy(&raw);
    for clear in [
        user.as_str(),
        DEFAULT_REDIRECT_URI,
        "code_verifier",
        "nonce",
    ] {
        assert!(!text.contains(clear), "{clear:?} in clear in {text:?}");
    }
    let opened = redis
        .sealer()
        .open(&names[0], &raw)
        .expect("sealed with the cache key");
    assert!(String::from_utf8_lossy(&opened).contains(&user));

    let set = second
        .client
        .exchange_authorization_code(by_state(&created.state, &code))
        .await
        .expect("the other replica finds the state in Redis")
        .into_inner()
        .token_set
        .unwrap();
    assert_eq!(set.id_token_claims.unwrap().sub, user);
    let status = first
        .client
        .exchange_authorization_code(by_state(&created.state, &code))
        .await
        .unwrap_err();
    assert_invalid(&status, "state");
    let left: Vec<String> = redis::cmd("KEYS")
        .arg("bankauth:*:authorization:*")
        .query(&mut connection)
        .unwrap();
    assert!(left.is_empty(), "the spent state is gone: {left:?}");
}

#[tokio::test]
async fn with_redis_down_states_are_neither_made_nor_taken_in_process_only() {
    let mut redis = RedisServer::start();
    let mut app = spawn_app_with(start_upstream().await, |config| use_redis(config, &redis)).await;
    let user = app.create_user("outage-1").await;
    let (created, code) = authorize(&mut app, connect(&user, "")).await;
    redis.kill();
    let pushed = app.sandbox().par_requests();
    for _ in 0..2 {
        let status = app
            .client
            .create_authorization_url(connect(&user, ""))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(error_info(&status).reason, "SHARED_CACHE_UNAVAILABLE");
        let status = app
            .client
            .exchange_authorization_code(by_state(&created.state, &code))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(error_info(&status).reason, "SHARED_CACHE_UNAVAILABLE");
    }
    assert!(app.sandbox().par_requests() <= pushed + 2);
}

/// A generic OpenID provider whose discovery advertises no PAR endpoint:
/// the request object rides in the URL, or (without
/// `request_object_signing_alg`) the plain parameters do.
#[tokio::test]
async fn an_oauth2_provider_without_par_gets_the_request_in_the_url() {
    for signed in [true, false] {
        let upstream = start_upstream_with(|client| {
            let mut options = SandboxOptions::new(vec![client]);
            options.pushed_authorization_requests = false;
            options
        })
        .await;
        let user = upstream.sandbox.seed_users(1).remove(0);
        let mut app = spawn_app_with(upstream, |config| {
            let provider = config.providers.values_mut().next().unwrap();
            provider.kind = ProviderKind::Oauth2;
            provider.client_auth = Some(ClientAuthMethod::PrivateKeyJwt);
            provider.send_sub = Some(true);
            provider.expiry_field = Some(bankauth::config::ExpiryField::Auto);
            if signed {
                provider.request_object_signing_alg = Some(provider.signing_algorithm);
            }
        })
        .await;
        let (created, code) = authorize(&mut app, connect(&user, "")).await;
        assert_eq!(app.sandbox().par_requests(), 0);
        let url = url::Url::parse(&created.url).unwrap();
        let query: std::collections::BTreeMap<String, String> =
            url.query_pairs().into_owned().collect();
        assert_eq!(query.contains_key("request"), signed, "{query:?}");
        assert_eq!(!query.contains_key("nonce"), signed, "{query:?}");
        assert_eq!(query["scope"], "openid");
        let set = app
            .client
            .exchange_authorization_code(by_state(&created.state, &code))
            .await
            .unwrap()
            .into_inner()
            .token_set
            .unwrap();
        assert_eq!(set.id_token_claims.unwrap().sub, user);

        // Moneyhub's purposes are not a generic provider's.
        let mut bank = connect(&user, "1ffe704d");
        let status = app
            .client
            .create_authorization_url(bank.clone())
            .await
            .unwrap_err();
        assert_eq!(error_info(&status).reason, "NOT_SUPPORTED_BY_PROVIDER");
        bank.purpose = Some(Purpose::RefreshConnection(pb::RefreshConnection {
            connection_id: "a:b".into(),
        }));
        let status = app.client.create_authorization_url(bank).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    }
}

/// The provider's answer is checked against what the state remembered: an
/// ID token for another user, or for another connection than the one a
/// re-authorisation named (or none), is refused; the error names the check
/// and carries none of the flow's secrets.
#[tokio::test]
async fn an_id_token_for_another_user_or_connection_is_refused() {
    let mut app = spawn_app().await;
    let user = app.create_user("mixup-1").await;
    let reauthorize = |user: &str| pb::CreateAuthorizationUrlRequest {
        purpose: Some(Purpose::ReauthorizeConnection(pb::ReauthorizeConnection {
            connection_id: "5e2f:01ab".into(),
        })),
        ..connect(user, "")
    };
    let cases = [
        (
            connect(&user, ""),
            IdTokenFault::Subject("someone-else"),
            "sub",
        ),
        (
            reauthorize(&user),
            IdTokenFault::Connection(Some("ffff:0000")),
            "mh:con_id",
        ),
        (
            reauthorize(&user),
            IdTokenFault::Connection(None),
            "mh:con_id",
        ),
    ];
    for (request, fault, check) in cases {
        let (created, code) = authorize(&mut app, request).await;
        app.sandbox().fault_next_id_token(fault);
        let status = app
            .client
            .exchange_authorization_code(by_state(&created.state, &code))
            .await
            .expect_err(check);
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let info = error_info(&status);
        assert_eq!(info.reason, "ID_TOKEN_INVALID", "{status:?}");
        assert_eq!(info.metadata["check"], check, "{status:?}");
        let shown = format!("{status:?}");
        for secret in [&created.state, &code] {
            assert!(!shown.contains(secret.as_str()), "{shown}");
        }
    }
}

/// The state is spent by the first exchange that presents it, whatever
/// the outcome: a code the provider refuses leaves nothing to retry with,
/// and the flow starts over with a new URL (as the proto and README say).
#[tokio::test]
async fn a_failed_exchange_spends_the_state_and_the_flow_starts_over() {
    let mut app = spawn_app().await;
    let user = app.create_user("spent-1").await;
    let (created, code) = authorize(&mut app, connect(&user, "")).await;
    let status = app
        .client
        .exchange_authorization_code(by_state(&created.state, "not-the-code"))
        .await
        .unwrap_err();
    assert_eq!(error_info(&status).reason, "UPSTREAM_REJECTED_REQUEST");
    let status = app
        .client
        .exchange_authorization_code(by_state(&created.state, &code))
        .await
        .unwrap_err();
    assert_invalid(&status, "state");
    let (again, code) = authorize(&mut app, connect(&user, "")).await;
    app.client
        .exchange_authorization_code(by_state(&again.state, &code))
        .await
        .expect("a new URL's state works");
}

/// A redirect URI is compared with, and sent to the provider as, the text
/// configured, which is the text registered there: no normalisation (a
/// trailing `/` added, the case of the scheme changed) on either side.
#[tokio::test]
async fn a_redirect_uri_is_used_exactly_as_configured() {
    const BARE: &str = "http://127.0.0.1";
    let upstream = start_upstream_with(|client| {
        let mut options = SandboxOptions::new(vec![client]);
        options.redirect_uris = vec![BARE.to_owned()];
        options
    })
    .await;
    let user = upstream.sandbox.seed_users(1).remove(0);
    let mut app = spawn_app_with(upstream, |config| {
        let provider = config.providers.values_mut().next().unwrap();
        provider.redirect_uris = vec![BARE.parse().unwrap()];
    })
    .await;
    let request = |redirect_uri: &str| pb::CreateAuthorizationUrlRequest {
        redirect_uri: redirect_uri.into(),
        ..connect(&user, "")
    };
    let (created, code) = authorize(&mut app, request(BARE)).await;
    app.client
        .exchange_authorization_code(by_state(&created.state, &code))
        .await
        .expect("the exchange succeeds");
    for variant in [
        "http://127.0.0.1/",
        "HTTP://127.0.0.1",
        "http://127.0.0.1:80",
        "http://127.0.0.1?x=1",
        "http://127.0.0.1#x",
        "http://me@127.0.0.1",
        "http://127.0.0.1/%2e",
    ] {
        let status = app
            .client
            .create_authorization_url(request(variant))
            .await
            .expect_err(variant);
        assert_invalid(&status, "redirect_uri");
    }
}

/// `expires_in` of the PAR answer is the provider's to choose; however
/// large, the URL's expire_time stays within the state's 10 minutes.
#[tokio::test]
async fn a_huge_pushed_request_lifetime_leaves_the_expiry_at_the_states() {
    for lifetime in [i64::MAX, 1 << 53] {
        let upstream = start_upstream_with(|client| {
            let mut options = SandboxOptions::new(vec![client]);
            options.pushed_request_lifetime_secs = lifetime;
            options
        })
        .await;
        let user = upstream.sandbox.seed_users(1).remove(0);
        let mut app = spawn_app_with(upstream, |_| {}).await;
        let before = time::OffsetDateTime::now_utc().unix_timestamp();
        let created = app
            .client
            .create_authorization_url(connect(&user, ""))
            .await
            .expect("CreateAuthorizationUrl succeeds")
            .into_inner();
        let expires = created.expire_time.unwrap().seconds;
        assert!(
            (before + 590..=before + 601).contains(&expires),
            "{lifetime}: {expires} is not the state's 10 minutes from {before}"
        );
    }
}
