//! A real `redis-server` per test, and what tests read from or plant in it:
//! the cache's key names (built through `TokenKey`) and encryption keys.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bankauth::config::Config;
use secrecy::SecretString;

use super::free_port;

/// A `redis-server` on a free loopback port, with persistence off; killed
/// when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
    /// The cache encryption key every replica using this Redis shares.
    key: bankauth::config::EncryptionKeyConfig,
}

impl RedisServer {
    pub fn start() -> Self {
        let port = free_port();
        let server = Self {
            child: spawn_redis_server(&["--port", &port.to_string()]),
            port,
            key: encryption_key("k1"),
        };
        server.wait_until_ready();
        server
    }

    /// Stops the server (as an outage would); the port stays reserved for `restart`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a server frozen by [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -{name} failed");
    }

    /// Starts the server again on its port after [`RedisServer::kill`], empty.
    pub fn restart(&mut self) {
        self.child = spawn_redis_server(&["--port", &self.port.to_string()]);
        self.wait_until_ready();
    }

    pub fn url(&self) -> SecretString {
        SecretString::from(format!("redis://127.0.0.1:{}/", self.port))
    }

    /// The sealer of the replicas using this Redis (see [`use_redis`]).
    pub fn sealer(&self) -> bankauth::cache::seal::Sealer {
        use secrecy::ExposeSecret;
        let encoded = self.key.key.as_ref().expect("an in-memory key");
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            encoded.expose_secret(),
        )
        .unwrap();
        bankauth::cache::seal::Sealer::new(vec![(self.key.id.clone(), bytes)]).unwrap()
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("a valid URL")
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ping = self
                .client()
                .get_connection()
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if ping.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Starts `redis-server` on loopback with persistence off and `args` added.
pub fn spawn_redis_server(args: &[&str]) -> Child {
    Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(args)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot start redis-server ({e}). Install it with `apt-get install redis-server` \
                 (scripts/test does this)"
            )
        })
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Points `config` at `redis`, with the encryption key its replicas share.
pub fn use_redis(config: &mut Config, redis: &RedisServer) {
    config.cache.redis_url = Some(redis.url());
    config.cache.encryption_keys = vec![redis.key.clone()];
}

/// A random cache encryption key named `id`, held in memory.
pub fn encryption_key(id: &str) -> bankauth::config::EncryptionKeyConfig {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    bankauth::config::EncryptionKeyConfig {
        id: id.to_owned(),
        key_file: None,
        key_env: None,
        key: Some(SecretString::from(base64::Engine::encode(
            &base64::engine::general_purpose::STANDARD,
            bytes,
        ))),
    }
}

/// The cache key of `user`'s widget token from the demo provider at `sandbox`.
pub fn widget_key(sandbox: &bankauth::sandbox::Sandbox, user: &str) -> bankauth::cache::TokenKey {
    let token_url = format!("{}/token", sandbox.issuer());
    let source = bankauth::cache::TokenSource {
        provider: bankauth::demo::DEMO_PROVIDER,
        token_url: &token_url,
        client_id: bankauth::demo::DEMO_CLIENT_ID,
        client_auth: "private_key_jwt",
    };
    bankauth::cache::TokenKey::new(
        &source,
        Some(&bankauth::domain::UserId::parse("user_id", user).unwrap()),
        &bankauth::domain::ScopeSet::single("widget_authentication"),
    )
}
