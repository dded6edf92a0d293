//! Interop: the real `bankauth` binary against implementations nobody here
//! wrote, started on free loopback ports: panva's `oidc-provider` (npm,
//! `tests/interop/oidc`) as the identity provider and `scim2-server` (PyPI,
//! `tests/interop/scim`) as the SCIM server. The sandbox encodes our own
//! reading of the provider's documents; these peers check that reading.

mod authorization;
mod oidc_peer;
mod scim_peer;
mod serve;
mod tokens;
mod users;
