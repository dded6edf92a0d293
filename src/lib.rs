//! bankauth: a gRPC auth service for open-banking APIs. It alone holds the
//! provider credentials, manages the provider's tenant users, and issues
//! user-scoped access tokens, caching each until shortly before it expires.
//!
//! Layers, outside in. A module imports only modules on lower lines, so
//! none imports one that imports it back:
//!
//! 1. [`server`] wires the rest from a [`config`]; [`demo`] runs it against
//!    the [`sandbox`] provider.
//! 2. [`api`], the gRPC surface.
//! 3. [`service`], the logic.
//! 4. [`provider`] (upstream HTTP, each kind's protocol) and [`access`]
//!    (callers' policies).
//! 5. [`cache`], the token cache and Redis names.
//! 6. [`telemetry`], logs, metrics and traces.
//! 7. The ground floor, importing nothing of the service: [`config`] (plain
//!    data), [`domain`], [`deadline`], [`proto`], [`random`] and
//!    [`token_bucket`].
//!
//! With the `sandbox` feature (the default), [`sandbox`] (a fake provider
//! speaking the upstream protocols) and [`demo`] (bankauth wired to it) are
//! built too, for the demo, the tests and the benchmark; the image is built
//! without them.

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
pub mod random;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod token_bucket;
