//! The `homeport` command line: parse arguments and call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates many small, short-lived buffers (JSON values, rows,
/// protocol frames); it measured cheaper per request than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "homeport",
    version,
    about = "Replication-aware data-access sidecar for multi-region PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a complete local multi-region sandbox (PostgreSQL primaries and replicas, Redis, one
    /// sidecar per region) until interrupted.
    Dev(homeport::dev::DevArgs),
    /// Validate a config, probe every endpoint once and print the topology.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HOMEPORT_LOG")
                .unwrap_or_else(|_| "homeport=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the async runtime: {e}")),
    };
    runtime.block_on(async {
        match cli.command {
            Command::Serve { config: path } => match homeport::config::Config::load(&path) {
                Err(e) => fail(e.to_string()),
                Ok(config) => match homeport::serve::run(config, Some(path)).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => fail(e.to_string()),
                },
            },
            Command::Check { config } => match homeport::config::Config::load(&config) {
                Err(e) => fail(e.to_string()),
                Ok(config) => {
                    let (report, ok) = homeport::check::run(&config).await;
                    print!("{report}");
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    }
                }
            },
            Command::Dev(args) => match homeport::dev::run_cli(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(e.to_string()),
            },
        }
    })
}

/// `HOMEPORT_WORKER_THREADS=1` (or `TOKIO_WORKER_THREADS`) sizes the runtime; `0` selects a
/// single-threaded runtime, which measured fastest per request on a busy 2-core machine.
fn runtime_builder() -> tokio::runtime::Builder {
    match std::env::var("HOMEPORT_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(0) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("homeport: {message}");
    ExitCode::from(2)
}
