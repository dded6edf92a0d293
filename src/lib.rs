//! bankauth: a gRPC auth service for open-banking APIs. It alone holds the
//! provider credentials, manages the provider's tenant users, and issues
//! user-scoped access tokens, caching each until shortly before it expires.
//!
//! Layers, outside in: [`api`] (gRPC) → [`service`] (logic) → [`cache`] and
//! [`provider`] (upstream HTTP). [`server`] wires them from [`config`].

pub mod access;
pub mod api;
pub mod cache;
pub mod config;
pub mod deadline;
pub mod demo;
pub mod domain;
pub mod proto;
pub mod provider;
pub mod random;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod token_bucket;
