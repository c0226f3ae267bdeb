//! The `homeport` command line: parse arguments and call into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the request path allocates many small, short-lived buffers (JSON values, rows,
/// protocol frames); it measured cheaper per request than the system allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// The one FFI call of the crate (the lint policy in Cargo.toml denies unsafe code elsewhere).
#[allow(unsafe_code)]
unsafe extern "C" {
    /// mimalloc's option setter, from the static library `libmimalloc-sys` links in.
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (libmimalloc-sys 0.1.49, pinned by
/// Cargo.lock; `libmimalloc_sys::extended` numbers the options the same way).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Freed memory goes back to the OS at once instead of after mimalloc's default 1 s delay:
/// the delayed purge only runs when the allocator is used again, so a sidecar that went quiet
/// after a spike kept its peak RSS (measured in docs/http.md: 130 MiB stayed 130 MiB; with
/// immediate purging it fell to 24 MiB, at no measurable cost for point reads).
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
#[allow(unsafe_code)]
fn return_freed_memory_promptly() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: a plain setter of an integer option, valid at any time from any thread.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}

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
    return_freed_memory_promptly();
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

/// `HOMEPORT_WORKER_THREADS=N` runs N worker threads; unset or `0`, one thread. A sidecar usually
/// has a core or less, and there one thread costs 15 to 30% less CPU per request than a thread
/// per core (no cross-thread wake-ups; docs/benchmarks.md), as PgBouncer's single thread does.
fn runtime_builder() -> tokio::runtime::Builder {
    match std::env::var("HOMEPORT_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(n) if n > 0 => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("homeport: {message}");
    ExitCode::from(2)
}
