#[cfg(feature = "sandbox")]
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bankauth::config::Config;
#[cfg(feature = "sandbox")]
use bankauth::demo::{DemoUpstream, banner};
#[cfg(feature = "sandbox")]
use bankauth::sandbox::SandboxOptions;
use bankauth::server::{Application, shutdown_signal};
use bankauth::telemetry;
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// gRPC auth service for open-banking APIs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with a configuration file (BANKAUTH_* variables override it).
    /// SIGHUP re-runs the providers' OpenID discovery.
    Serve {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Run against the built-in sandbox provider with an in-process cache. Not for production.
    /// Only in builds with the `sandbox` feature (the default; not the container image).
    #[cfg(feature = "sandbox")]
    Demo {
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
    },
    /// Validate a configuration (keys and secrets included) offline, then exit.
    CheckConfig {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print the SHA-256 of an API key read from standard input, for api_key_sha256.
    ///
    /// The value to list in access.callers.<name>.api_key_sha256. Reading the
    /// key from standard input keeps it out of shell history and `ps`; one
    /// trailing newline is dropped, and the key itself is never printed.
    HashKey,
    /// Print the shell completion script for SHELL to standard output.
    Completions { shell: Shell },
    /// Ask a running bankauth for its gRPC health; exit 0 when SERVING (for container health checks).
    Health {
        /// host:port, a name (such as a Kubernetes Service's) or an address.
        #[arg(long, default_value = "127.0.0.1:50051", value_parser = host_and_port)]
        addr: String,
        /// The health service to check: "" (readiness) or "liveness".
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve { config } => serve(config).await,
        #[cfg(feature = "sandbox")]
        Command::Demo { listen } => demo(listen).await,
        Command::CheckConfig { config } => check_config(config),
        Command::Health { addr, service } => health(addr, service).await,
        Command::HashKey => hash_key(),
        Command::Completions { shell } => completions(shell),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(path: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(path.as_deref())?;
    let _telemetry = telemetry::init(config.telemetry.log_format);
    let app = Application::build(config).await?;
    tracing::info!(addr = %app.local_addr(), metrics = ?app.metrics_addr(), "bankauth listening");
    Ok(app.run_until_stopped(shutdown_signal()).await?)
}

#[cfg(feature = "sandbox")]
async fn demo(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = telemetry::init(telemetry::LogFormat::Text);
    let upstream = DemoUpstream::start(|client| SandboxOptions::new(vec![client])).await?;
    let app = Application::build(upstream.config(listen)).await?;
    println!("{}", banner(app.local_addr()));
    Ok(app.run_until_stopped(shutdown_signal()).await?)
}

fn check_config(path: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(path.as_deref())?;
    bankauth::server::check(&config)?;
    println!(
        "configuration is valid: {} provider(s)",
        config.providers.len()
    );
    Ok(())
}

/// Generated into memory first: clap_complete panics on a failed write
/// (`| head`), where an error should be reported.
fn completions(shell: Shell) -> Result<(), Box<dyn std::error::Error>> {
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "bankauth", &mut script);
    std::io::Write::write_all(&mut std::io::stdout(), &script)?;
    Ok(())
}

/// Reads stdin to its end rather than a line, so a key piped from a file
/// or typed and ended with Ctrl-D hashes alike; only the one newline that
/// ends a file or a typed line is not part of the key.
fn hash_key() -> Result<(), Box<dyn std::error::Error>> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
        .map_err(|e| format!("cannot read the API key from standard input: {e}"))?;
    let key = input
        .strip_suffix("\r\n")
        .or_else(|| input.strip_suffix('\n'))
        .unwrap_or(&input);
    println!("{}", bankauth::access::api_key_sha256(key)?);
    Ok(())
}

/// `--addr`: a host (name, IPv4 or [IPv6]) and a port, as in a URL's authority.
fn host_and_port(text: &str) -> Result<String, String> {
    match text.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
            Ok(text.to_owned())
        }
        _ => Err("expected host:port, e.g. bankauth.payments.svc:50051".to_owned()),
    }
}

async fn health(addr: String, service: String) -> Result<(), Box<dyn std::error::Error>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(std::time::Duration::from_secs(2))
        .timeout(std::time::Duration::from_secs(2))
        .connect()
        .await?;
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest { service })
        .await?
        .into_inner()
        .status();
    if status == ServingStatus::Serving {
        println!("SERVING");
        Ok(())
    } else {
        Err(format!("{status:?}").into())
    }
}
