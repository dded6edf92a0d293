//! One connection type over a single Redis node or a Redis Cluster, so the
//! store's commands are written once. Both reconnect by themselves.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, TlsCertificates, Value};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{CacheConfig, ConfigError};

/// Where the shared cache lives and how to reach it.
#[derive(Clone)]
pub struct RedisTarget {
    pub topology: Topology,
    /// PEM roots trusted for `rediss://`; the system's when absent.
    pub ca_pem: Option<Vec<u8>>,
    /// Bound on connecting and on each command.
    pub timeout: Duration,
}

impl RedisTarget {
    /// Where the shared cache lives, if anywhere, with the CA file read.
    pub fn from_config(config: &CacheConfig) -> Result<Option<Self>, ConfigError> {
        let topology = match &config.redis_url {
            Some(url) => Topology::SingleNode(url.clone()),
            None if config.redis_cluster_urls.is_empty() => return Ok(None),
            None => Topology::Cluster(config.redis_cluster_urls.clone()),
        };
        let ca_pem = match &config.redis_ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| {
                ConfigError::invalid("cache.redis_ca_file", format!("cannot be read: {e}"))
            })?),
            None => None,
        };
        Ok(Some(Self {
            topology,
            ca_pem,
            timeout: Duration::from_millis(config.redis_timeout_ms),
        }))
    }
}

#[derive(Clone)]
pub enum Topology {
    SingleNode(SecretString),
    /// Seed nodes; the cluster's slots and other nodes are discovered.
    Cluster(Vec<SecretString>),
}

impl std::fmt::Debug for RedisTarget {
    /// URLs may carry passwords, so only the shape is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nodes = match &self.topology {
            Topology::SingleNode(_) => 1,
            Topology::Cluster(seeds) => seeds.len(),
        };
        f.debug_struct("RedisTarget")
            .field("cluster", &matches!(self.topology, Topology::Cluster(_)))
            .field("nodes", &nodes)
            .field("custom_ca", &self.ca_pem.is_some())
            .finish()
    }
}

#[derive(Clone)]
pub enum Connection {
    SingleNode(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisTarget {
    /// Connects once, so a wrong URL or an unreachable Redis stops startup.
    pub async fn connect(&self) -> redis::RedisResult<Connection> {
        match &self.topology {
            Topology::SingleNode(url) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                let manager = self
                    .client(url)?
                    .get_connection_manager_with_config(config)
                    .await?;
                Ok(Connection::SingleNode(manager))
            }
            Topology::Cluster(seeds) => {
                let mut builder =
                    ClusterClientBuilder::new(seeds.iter().map(|url| url.expose_secret()))
                        .connection_timeout(self.timeout)
                        .response_timeout(self.timeout)
                        .retries(1);
                if let Some(certs) = self.certificates() {
                    builder = builder.certs(certs);
                }
                let connection = builder.build()?.get_async_connection().await?;
                Ok(Connection::Cluster(connection))
            }
        }
    }

    /// The configuration key this target came from, for errors.
    pub fn config_key(&self) -> &'static str {
        match self.topology {
            Topology::SingleNode(_) => "cache.redis_url",
            Topology::Cluster(_) => "cache.redis_cluster_urls",
        }
    }

    /// Clients for subscribing: the node itself, or each cluster seed in turn
    /// (a message published on any cluster node reaches subscribers on all).
    pub fn subscribers(&self) -> redis::RedisResult<Vec<redis::Client>> {
        match &self.topology {
            Topology::SingleNode(url) => Ok(vec![self.client(url)?]),
            Topology::Cluster(seeds) => seeds.iter().map(|url| self.client(url)).collect(),
        }
    }

    fn client(&self, url: &SecretString) -> redis::RedisResult<redis::Client> {
        match self.certificates() {
            Some(certs) => redis::Client::build_with_tls(url.expose_secret(), certs),
            None => redis::Client::open(url.expose_secret()),
        }
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.ca_pem.as_ref().map(|pem| TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        })
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::SingleNode(connection) => connection.req_packed_command(cmd),
            Self::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::SingleNode(connection) => connection.req_packed_commands(pipeline, offset, count),
            Self::Cluster(connection) => connection.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::SingleNode(connection) => connection.get_db(),
            Self::Cluster(connection) => connection.get_db(),
        }
    }
}
