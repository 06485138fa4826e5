//! The `switchboard` binary; everything lives in the library.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The shared runtime names its threads, so the host can lower their priority below the
    // realtime lane's (`runtime.bulk_nice`).
    let runtime = match switchboard::host::shared_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(switchboard::cli::run(switchboard::cli::Cli::parse())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // As `main` returning the error would print it, then a status that says whose
            // fault it was (the exit codes in docs/OPERATIONS.md).
            eprintln!("Error: {error:?}");
            ExitCode::from(switchboard::cli::exit_code(&error))
        }
    }
}
