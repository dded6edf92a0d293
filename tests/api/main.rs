//! Integration tests: one binary, one module per area, over real sockets.

mod access;
mod authorization;
mod cache;
mod code_exchange;
mod commands;
mod examples;
mod grpcurl;
mod helpers;
mod interop;
mod lifecycle;
mod operations;
mod process;
mod providers;
mod redis_modes;
mod replicas;
mod resilience;
mod server;
mod stampede;
mod tls;
mod tokens;
mod upstream_errors;
mod users;
mod validation;
