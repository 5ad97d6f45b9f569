//! The `waiver` binary's library: command line, data directory, demo and benchmarks.
//!
//! It is a library too so that integration tests drive the same functions the binary runs.

/// `println!` that ignores a closed stdout (`waiver … | head`) instead of panicking.
macro_rules! outln {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod app;
pub mod background;
pub mod bench;
pub mod bench_server;
pub mod bench_ui;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod demo;
pub mod notify;
pub mod output;
pub mod remote;
pub mod serve;
pub mod spool;

/// Logs go to stderr; `RUST_LOG` overrides the default filter.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("waiver=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}
