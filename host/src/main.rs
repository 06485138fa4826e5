//! The `switchboard` binary; everything lives in the library.

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    match switchboard::cli::run(switchboard::cli::Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // As `main` returning the error would print it, then a status that says whose
            // fault it was (the exit codes in docs/OPERATIONS.md).
            eprintln!("Error: {error:?}");
            ExitCode::from(switchboard::cli::exit_code(&error))
        }
    }
}
