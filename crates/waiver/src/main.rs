//! The `waiver` command. Exit codes (CONTRACT.md §1): 0 success, 1 a check said no, 2 usage,
//! input or refusal, 3 any other failure.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: the decision path allocates and frees small objects
/// on every request (Cedar's evaluator most of all), and glibc spent ~12 % of a serving
/// node's CPU in malloc and free (BENCHMARKS.md, issue 21).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = waiver::cli::Cli::parse();
    waiver::init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(3);
        }
    };
    let output = cli.output;
    let code = match runtime.block_on(waiver::commands::run(cli)) {
        Ok(code) => code.into(),
        Err(e) => waiver::commands::report(&e, output).into(),
    };
    // Every write was awaited inside `run` (and `serve` drains its own work), so what is left
    // are background tasks of the database pools; one of sqlx's can spin forever on a closed
    // pool, and dropping the runtime would wait for it. Bounded, so the process always ends.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}
