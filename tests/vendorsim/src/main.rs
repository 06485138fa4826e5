//! `vendorsim`: runs the vendor simulators standalone, for trying a host by hand.

use clap::Parser;

#[derive(Parser)]
#[command(about = "Vendor simulators on loopback (FCM)")]
struct Args {
    /// FCM project id the simulator accepts.
    #[arg(long, default_value = "demo-project")]
    project: String,
    /// Service-account email the simulator accepts.
    #[arg(
        long,
        default_value = "switchboard@demo-project.iam.gserviceaccount.com"
    )]
    client_email: String,
    /// SPKI PEM file with the service account's public key.
    #[arg(long)]
    public_key: std::path::PathBuf,
    /// Mean response latency in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let public_key_pem = std::fs::read_to_string(&args.public_key)?;
    let mut config = vendorsim::fcm::FcmConfig::new(
        &args.project,
        &vendorsim::ServiceAccount {
            client_email: args.client_email,
            private_key_pem: String::new(),
            public_key_pem,
        },
    );
    config.faults.latency =
        vendorsim::Latency::fixed(std::time::Duration::from_millis(args.latency_ms));
    let sim = vendorsim::fcm::start(config).await?;
    println!(
        "fcm simulator on {} (token URI {}/token)",
        sim.url(),
        sim.url()
    );
    tokio::signal::ctrl_c().await?;
    println!("{}", serde_json::to_string(&sim.stats.snapshot())?);
    Ok(())
}
