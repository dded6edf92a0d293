//! Replicas as deployed: two and three `bankauth serve` processes (the real
//! binary) sharing one Redis, or a 3-master Redis Cluster, in front of the
//! sandbox provider, which counts the token requests that reach it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bankauth::demo::DemoUpstream;
use bankauth::proto::v1 as pb;
use futures::future::join_all;
use tonic::Code;

use crate::helpers::{Bankauth, RedisServer, error_info, start_upstream, write_client_key};
use crate::redis_modes::RedisCluster;

/// One `bankauth serve` process of the deployment; killed when dropped.
struct Replica(Bankauth);

impl Replica {
    async fn start(config: &Path) -> Self {
        Self(Bankauth::start(config).await)
    }

    async fn widget(
        &self,
        user: &str,
        timeout: Duration,
    ) -> Result<pb::AccessToken, tonic::Status> {
        let mut request = tonic::Request::new(pb::IssueWidgetTokenRequest {
            provider: String::new(),
            user_id: user.to_owned(),
            force_refresh: false,
        });
        request.set_timeout(timeout);
        let response = self.0.client.clone().issue_widget_token(request).await?;
        Ok(response.into_inner().token.expect("a token"))
    }
}

/// Where the replicas' shared cache is.
enum SharedCache<'a> {
    Node(&'a RedisServer),
    Cluster(&'a RedisCluster),
}

/// Writes a configuration for replicas of one deployment: the sandbox
/// provider (plus `provider_extra`), the shared cache, one encryption key.
fn write_config(
    dir: &Path,
    upstream: &DemoUpstream,
    cache: &SharedCache<'_>,
    provider_extra: &str,
) -> PathBuf {
    use secrecy::ExposeSecret;
    let key = write_client_key(dir, upstream);
    let cache_key = dir.join("cache.key");
    std::fs::write(&cache_key, "bXktdGVzdC1rZXktMzItYnl0ZXMtbG9uZy0wMDAwMDA=").unwrap();
    let redis = match cache {
        SharedCache::Node(redis) => format!("redis_url = {:?}", redis.url().expose_secret()),
        SharedCache::Cluster(cluster) => {
            let urls: Vec<String> = cluster
                .urls()
                .iter()
                .map(|u| u.expose_secret().to_owned())
                .collect();
            format!("redis_cluster_urls = {urls:?}")
        }
    };
    let config = dir.join("bankauth.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            listen_addr = "127.0.0.1:0"
            allow_plaintext = true

            [cache]
            {redis}
            encryption_keys = [{{ id = "k1", key_file = {cache_key:?} }}]
            max_replicas = 3

            [access]
            allow_anonymous = true

            [providers.sandbox]
            kind = "moneyhub"
            issuer = "{issuer}"
            client_id = "{client}"
            private_key_file = {key:?}
            data_scopes = ["accounts:read"]
            {provider_extra}
            "#,
            issuer = upstream.sandbox.issuer(),
            client = bankauth::demo::DEMO_CLIENT_ID,
        ),
    )
    .unwrap();
    config
}

async fn start_replicas(count: usize, config: &Path) -> Vec<Replica> {
    join_all((0..count).map(|_| Replica::start(config))).await
}

/// 400 concurrent callers, spread over `replicas`, ask for one new user's
/// widget token; every one gets the same token.
async fn stampede(replicas: &[Replica], user: &str) {
    let calls =
        (0..400).map(|i| replicas[i % replicas.len()].widget(user, Duration::from_secs(10)));
    let tokens: Vec<_> = join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert!(
        tokens.iter().all(|t| t == &tokens[0]),
        "callers got different tokens"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_processes_make_one_provider_call_per_key_on_redis_and_on_a_cluster() {
    let redis = RedisServer::start();
    let cluster = RedisCluster::start();
    for cache in [SharedCache::Node(&redis), SharedCache::Cluster(&cluster)] {
        for count in [2, 3] {
            let upstream = start_upstream().await;
            let dir = tempfile::tempdir().unwrap();
            let replicas =
                start_replicas(count, &write_config(dir.path(), &upstream, &cache, "")).await;
            for user in upstream.sandbox.seed_users(5) {
                let before = upstream.sandbox.token_requests();
                stampede(&replicas, &user).await;
                assert_eq!(
                    upstream.sandbox.token_requests(),
                    before + 1,
                    "{count} replicas made more than one provider call for one key"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_cached_token_survives_a_replica_restart() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, &SharedCache::Node(&redis), "");
    let user = upstream.sandbox.seed_users(1).remove(0);
    let first = Replica::start(&config).await;
    let token = first.widget(&user, Duration::from_secs(10)).await.unwrap();
    let calls = upstream.sandbox.token_requests();
    drop(first);

    let restarted = Replica::start(&config).await;
    assert_eq!(
        restarted
            .widget(&user, Duration::from_secs(10))
            .await
            .unwrap(),
        token
    );
    assert_eq!(
        upstream.sandbox.token_requests(),
        calls,
        "the restarted replica asked the provider"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_reaches_every_replica_process_on_a_cluster() {
    let cluster = RedisCluster::start();
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &upstream, &SharedCache::Cluster(&cluster), "");
    let replicas = start_replicas(3, &config).await;
    let user = upstream.sandbox.seed_users(1).remove(0);
    let timeout = Duration::from_secs(10);
    let revoked = replicas[0].widget(&user, timeout).await.unwrap();
    for replica in &replicas {
        assert_eq!(
            replica.widget(&user, timeout).await.unwrap(),
            revoked,
            "each holds it in process"
        );
    }
    let calls = upstream.sandbox.token_requests();

    let invalidated = replicas[2]
        .0
        .client
        .clone()
        .invalidate_token(pb::InvalidateTokenRequest {
            provider: String::new(),
            token: Some(pb::invalidate_token_request::Token::AccessToken(
                revoked.access_token.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner()
        .invalidated;
    assert!(invalidated);
    // Each replica stops serving the revoked token as soon as it hears of
    // the invalidation (well before memory_ttl_secs, 60 s).
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, replica) in replicas.iter().enumerate() {
        while replica.widget(&user, timeout).await.unwrap() == revoked {
            assert!(
                Instant::now() < deadline,
                "replica {i} kept serving the revoked token"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let fresh = replicas[0].widget(&user, timeout).await.unwrap();
    for replica in &replicas {
        assert_eq!(replica.widget(&user, timeout).await.unwrap(), fresh);
    }
    assert_eq!(
        upstream.sandbox.token_requests(),
        calls + 1,
        "one fresh token for all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_processes_share_the_providers_budget() {
    let redis = RedisServer::start();
    let upstream = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    // 60 a minute: a burst of 6 for all three together, then one a second.
    let config = write_config(
        dir.path(),
        &upstream,
        &SharedCache::Node(&redis),
        "rate_limit_per_minute = 60",
    );
    let replicas = start_replicas(3, &config).await;
    let users = upstream.sandbox.seed_users(30);
    let before = upstream.sandbox.token_requests();
    let started = Instant::now();
    let calls = users
        .iter()
        .enumerate()
        .map(|(i, user)| replicas[i % 3].widget(user, Duration::from_millis(300)));
    let results = join_all(calls).await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut refused = 0;
    for result in &results {
        if let Err(status) = result {
            assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
            assert_eq!(error_info(status).reason, "UPSTREAM_BUDGET_EXHAUSTED");
            refused += 1;
        }
    }
    let sent = upstream.sandbox.token_requests() - before;
    // Each replica alone would allow a burst of 6 (18 together); shared,
    // at most the one burst plus what refilled meanwhile.
    assert!(
        sent as f64 <= 6.0 + elapsed.ceil(),
        "{sent} token requests reached the provider in {elapsed:.1} s"
    );
    assert_eq!(
        sent as usize,
        results.len() - refused,
        "refused calls never reached the provider"
    );
    assert!(refused > 0);
}
