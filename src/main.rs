use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use bankauth::config::Config;
use bankauth::demo::{DemoUpstream, banner};
use bankauth::provider::Providers;
use bankauth::sandbox::SandboxOptions;
use bankauth::server::{Application, shutdown_signal};
use clap::{Parser, Subcommand};

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
}

#[tokio::main]
async fn main() -> ExitCode {
    bankauth::telemetry::init();
    let result = match Cli::parse().command {
        Command::Serve { config } => serve(config).await,
        Command::Demo { listen } => demo(listen).await,
        Command::CheckConfig { config } => check_config(config),
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
    let app = Application::build(Config::load(path.as_deref())?).await?;
    tracing::info!(addr = %app.local_addr(), "bankauth listening");
    Ok(app.run_until_stopped(shutdown_signal()).await?)
}

async fn demo(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let upstream = DemoUpstream::start(|client| SandboxOptions::new(vec![client])).await?;
    let app = Application::build(upstream.config(listen)).await?;
    println!("{}", banner(app.local_addr()));
    Ok(app.run_until_stopped(shutdown_signal()).await?)
}

fn check_config(path: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(path.as_deref())?;
    Providers::check(&config)?;
    println!(
        "configuration is valid: {} provider(s)",
        config.providers.len()
    );
    Ok(())
}
