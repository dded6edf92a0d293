//! bankauth: a gRPC auth service for open-banking APIs. It alone holds the
//! provider credentials, manages the provider's tenant users, and issues
//! user-scoped access tokens, caching each until shortly before it expires.
//!
//! Layers, top down; a module imports only from the layers below it:
//!
//! - `main` (the binary) → [`server`] (startup, serving, shutdown, wiring
//!   everything from [`config`]);
//! - [`api`] (gRPC: validation, caller checks through [`access`], errors to
//!   statuses);
//! - [`service`] (the logic: users and tokens through the cache);
//! - [`provider`] (upstream HTTP: token endpoints, SCIM, ID tokens) and
//!   [`access`] (who may call what);
//! - [`cache`] (token tiers, single flight, sealing);
//! - on the ground floor, importing nothing of the service: [`config`]
//!   (plain data), [`domain`] (validated types), [`deadline`], [`proto`] and
//!   [`telemetry`].
//!
//! With the `sandbox` feature (the default), `sandbox` (a fake provider
//! speaking the upstream protocols) and `demo` (bankauth wired to it) sit
//! beside [`server`], for the demo, the tests and the benchmark.

pub mod access;
pub mod api;
pub mod cache;
pub mod config;
pub mod deadline;
#[cfg(feature = "sandbox")]
pub mod demo;
pub mod domain;
pub mod proto;
pub mod provider;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod server;
pub mod service;
pub mod telemetry;
