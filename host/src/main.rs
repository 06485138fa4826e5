//! The `switchboard` binary; everything lives in the library.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchboard::cli::run(switchboard::cli::Cli::parse()).await
}
