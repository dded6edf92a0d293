use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bankauth::cache::RedisTarget;
use bankauth::cache::seal::Sealer;
use bankauth::config::Config;
use bankauth::demo::{DemoUpstream, banner};
use bankauth::provider::Providers;
use bankauth::sandbox::SandboxOptions;
use bankauth::server::{Application, shutdown_signal};
use bankauth::telemetry::{self, LogFormat};
use clap::{Parser, Subcommand};
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
    Demo {
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
    },
    /// Validate a configuration (keys and secrets included) offline, then exit.
    CheckConfig {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Ask a running bankauth for its gRPC health; exit 0 when SERVING (for container health checks).
    Health {
        #[arg(long, default_value = "127.0.0.1:50051")]
        addr: SocketAddr,
        /// The health service to check: "" (readiness) or "liveness".
        #[arg(long, default_value = "")]
        service: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Serve { config } => serve(config).await,
        Command::Demo { listen } => demo(listen).await,
        Command::CheckConfig { config } => check_config(config),
        Command::Health { addr, service } => health(addr, service).await,
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

async fn demo(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let _telemetry = telemetry::init(LogFormat::Text);
    let upstream = DemoUpstream::start(|client| SandboxOptions::new(vec![client])).await?;
    let app = Application::build(upstream.config(listen)).await?;
    println!("{}", banner(app.local_addr()));
    Ok(app.run_until_stopped(shutdown_signal()).await?)
}

fn check_config(path: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(path.as_deref())?;
    bankauth::server::validate(&config)?;
    bankauth::server::usable_tls(&config)?;
    Providers::check(&config)?;
    Sealer::from_config(&config.cache)?;
    RedisTarget::from_config(&config.cache)?;
    println!(
        "configuration is valid: {} provider(s)",
        config.providers.len()
    );
    Ok(())
}

async fn health(addr: SocketAddr, service: String) -> Result<(), Box<dyn std::error::Error>> {
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
