//! Integration tests: one binary, one module per area, over real sockets.

mod cache;
mod helpers;
mod server;
mod tokens;
mod upstream_errors;
mod users;
mod validation;
