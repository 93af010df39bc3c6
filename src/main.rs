//! The `wharf` command line: wiring only.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wharf::config::Config;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// wharf: a fast, trustworthy OCI container registry.
#[derive(Parser)]
#[command(name = "wharf", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the registry (without -c: plain HTTP on 127.0.0.1:5000, storage in ./data).
    Serve {
        /// Configuration file (TOML).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate a configuration file and exit (status 0 when valid).
    CheckConfig {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

fn load(path: Option<&PathBuf>) -> Result<Config, String> {
    match path {
        Some(p) => Config::load(p).map_err(|e| e.to_string()),
        None => Ok(Config::embedded_default()),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => {
            load(config.as_ref()).and_then(|cfg| wharf::server::run(cfg).map_err(|e| e.to_string()))
        }
        Command::CheckConfig { config } => {
            load(Some(&config)).map(|_| println!("{}: ok", config.display()))
        }
        Command::Version => {
            println!("wharf {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wharf: {e}");
            ExitCode::FAILURE
        }
    }
}
