//! The shared cache on a real 3-master Redis Cluster and on a TLS Redis with
//! a username and password, both started on loopback by the test.

use std::net::TcpStream;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use bankauth::server::{Application, StartupError};
use futures::future::join_all;
use secrecy::SecretString;

use crate::helpers::{
    TestCa, encryption_key, free_port, spawn_app_with, spawn_redis_server, start_upstream,
};

/// Three masters, no replicas, the 16384 slots split between them.
pub struct RedisCluster {
    nodes: Vec<(Child, u16)>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<(Child, u16)> = (0..3)
            .map(|i| {
                let (port, bus_port) = (free_port(), free_port());
                let conf = dir.path().join(format!("nodes-{i}.conf"));
                let child = spawn_redis_server(&[
                    "--port",
                    &port.to_string(),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-port",
                    &bus_port.to_string(),
                    "--cluster-config-file",
                    conf.to_str().unwrap(),
                    "--dir",
                    dir.path().to_str().unwrap(),
                ]);
                (child, port)
            })
            .collect();
        let cluster = Self { nodes, _dir: dir };
        for (_, port) in &cluster.nodes {
            wait_for_port(*port);
        }
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli (installed with redis-server: `apt-get install redis-server`)");
        assert!(
            created.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        cluster.wait_until_ok();
        cluster
    }

    pub fn urls(&self) -> Vec<SecretString> {
        self.nodes
            .iter()
            .map(|(_, port)| SecretString::from(format!("redis://127.0.0.1:{port}/")))
            .collect()
    }

    fn node(&self, index: usize) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.nodes[index].1))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn wait_until_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for index in 0..self.nodes.len() {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut self.node(index))
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(Instant::now() < deadline, "cluster not ok: {info}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Keys held by each master.
    fn key_counts(&self) -> Vec<i64> {
        (0..self.nodes.len())
            .map(|i| redis::cmd("DBSIZE").query(&mut self.node(i)).unwrap())
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (child, _) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn replicas_share_tokens_coalesce_and_invalidate_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let key = encryption_key("k1");
    let upstream = start_upstream().await;
    let use_cluster = |c: &mut bankauth::config::Config| {
        c.cache.redis_cluster_urls = cluster.urls();
        c.cache.encryption_keys = vec![key.clone()];
    };
    let mut a = spawn_app_with(upstream.clone(), use_cluster).await;
    let mut b = spawn_app_with(upstream.clone(), use_cluster).await;

    // Tokens for many users land on every master (keys hash to slots)…
    let mut users = Vec::new();
    for i in 0..12 {
        users.push(a.create_user(&format!("customer-{i}")).await);
    }
    let calls = upstream.sandbox.token_requests();
    let mut tokens = Vec::new();
    for user in &users {
        tokens.push(a.widget_token(user).await.unwrap());
    }
    assert_eq!(
        upstream.sandbox.token_requests(),
        calls + users.len() as u64
    );
    let counts = cluster.key_counts();
    assert!(
        counts.iter().all(|&keys| keys > 0),
        "keys per master: {counts:?}"
    );

    // …and the other replica reads each one from the cluster.
    for (user, token) in users.iter().zip(&tokens) {
        assert_eq!(&b.widget_token(user).await.unwrap(), token);
    }
    assert_eq!(
        upstream.sandbox.token_requests(),
        calls + users.len() as u64
    );

    // A burst on both replicas for a new user's token: one upstream call.
    let newcomer = a.create_user("newcomer").await;
    let before = upstream.sandbox.token_requests();
    let burst = (0..50).map(|i| {
        let app = if i % 2 == 0 { &a } else { &b };
        let mut client = app.client.clone();
        let user = newcomer.clone();
        async move {
            client
                .issue_widget_token(bankauth::proto::v1::IssueWidgetTokenRequest {
                    provider: String::new(),
                    user_id: user,
                    force_refresh: false,
                })
                .await
                .unwrap()
                .into_inner()
        }
    });
    let answers = join_all(burst).await;
    assert_eq!(upstream.sandbox.token_requests(), before + 1);
    assert!(answers.iter().all(|answer| answer == &answers[0]));

    // Invalidation reaches the other replica through the cluster's pub/sub.
    let revoked = &tokens[0];
    assert!(a.invalidate(&revoked.access_token, false).await);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let served = b.widget_token(&users[0]).await.unwrap();
        if served != *revoked {
            assert_eq!(upstream.sandbox.token_requests(), before + 2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replica b kept the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // DeleteUser through b finds the user's tokens in the cluster (the
    // per-user index lives in its own slot) and a stops serving them.
    let deleted = &users[1];
    b.client
        .delete_user(bankauth::proto::v1::DeleteUserRequest {
            provider: String::new(),
            user_id: deleted.clone(),
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Ok(served) = a.widget_token(deleted).await {
        assert_eq!(served, tokens[1]);
        assert!(
            Instant::now() < deadline,
            "replica a kept the deleted user's token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TLS-only Redis whose one user is `bankauth` (the default user is off).
struct TlsRedis {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

const REDIS_PASSWORD: &str = "correct-horse-battery";

impl TlsRedis {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "ca");
        ca.issue("server", "IP:127.0.0.1");
        let port = free_port();
        let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
        let child = spawn_redis_server(&[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            "no",
            "--user",
            "default",
            "off",
            "--user",
            "bankauth",
            "on",
            &format!(">{REDIS_PASSWORD}"),
            "~*",
            "&*",
            "+@all",
        ]);
        wait_for_port(port);
        Self { child, port, dir }
    }

    fn url(&self, password: &str) -> SecretString {
        SecretString::from(format!(
            "rediss://bankauth:{password}@127.0.0.1:{}/",
            self.port
        ))
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn tokens_are_cached_in_a_tls_redis_with_username_and_password() {
    let redis = TlsRedis::start();
    let key = encryption_key("k1");
    let upstream = start_upstream().await;
    let use_tls_redis = |c: &mut bankauth::config::Config| {
        c.cache.redis_url = Some(redis.url(REDIS_PASSWORD));
        c.cache.redis_ca_file = Some(redis.ca_file());
        c.cache.encryption_keys = vec![key.clone()];
    };
    let mut a = spawn_app_with(upstream.clone(), use_tls_redis).await;
    let user = a.create_user("customer-1").await;
    let token = a.widget_token(&user).await.unwrap();
    let calls = upstream.sandbox.token_requests();

    // A second replica finds the token in Redis: no upstream call.
    let mut b = spawn_app_with(upstream.clone(), use_tls_redis).await;
    assert_eq!(b.widget_token(&user).await.unwrap(), token);
    assert_eq!(upstream.sandbox.token_requests(), calls);
}

#[tokio::test]
async fn a_wrong_redis_password_or_an_untrusted_certificate_stops_startup() {
    let redis = TlsRedis::start();
    let upstream = start_upstream().await;
    let cases = [
        (redis.url("wrong-password"), Some(redis.ca_file())),
        (redis.url(REDIS_PASSWORD), None),
    ];
    for (url, ca_file) in cases {
        let mut config = upstream.config(([127, 0, 0, 1], 0).into());
        config.cache.redis_url = Some(url);
        config.cache.redis_ca_file = ca_file;
        config.cache.encryption_keys = vec![encryption_key("k1")];
        let error = Application::build(config)
            .await
            .err()
            .expect("startup fails");
        assert!(matches!(error, StartupError::Redis { .. }), "{error}");
        let message = error.to_string();
        assert!(message.contains("cache.redis_url"), "{message}");
        assert!(!message.contains("wrong-password"), "{message}");
        assert!(!message.contains(REDIS_PASSWORD), "{message}");
    }
}
