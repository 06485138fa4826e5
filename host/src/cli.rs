//! The `switchboard` command line: run the host, run the demo, check a plugin component, and
//! the operator commands that talk to a running host's admin API (`weights`, `plugins`,
//! `vendors`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::telemetry::{self, LogFormat};

/// Switchboard: delivers notification requests from Kafka through WebAssembly vendor adapters.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host with a config file until Ctrl-C or SIGTERM.
    Run {
        /// The TOML config file.
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: PathBuf,
        /// With no `kafka.brokers`, run on librdkafka's in-process mock cluster: a test cluster
        /// that keeps about 5 MiB per partition and silently deletes older records. For trying
        /// the host out, never for traffic that matters.
        #[arg(long)]
        embedded_test_cluster: bool,
    },
    /// Config tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run the self-contained demo: embedded Kafka, the FCM simulator, the bundled FCM plugin.
    /// Prints progress on stderr and one JSON summary line last on stdout.
    Demo {
        /// Requests to produce.
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Directory holding the bundled plugin components.
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        /// Simulated vendor latency, in milliseconds.
        #[arg(long, default_value_t = 5)]
        vendor_latency_ms: u64,
    },
    /// Plugin tools.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Dead-letter queue tools.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Send history: per-vendor outcome counts and latency by time bucket, from the store the
    /// host writes (`[history]` in the config), and the latest failed sends.
    History {
        /// The host's config file (for the history store).
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: PathBuf,
        /// Only this vendor (plugin name).
        #[arg(long)]
        vendor: Option<String>,
        /// How far back: 90s, 30m, 1h, 2d, 1w, 1h 30m.
        #[arg(long, default_value = "1h")]
        since: String,
        /// One JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Failed sends to list.
        #[arg(long, default_value_t = 20)]
        failures: u32,
    },
    /// A running host's channel weights: read, change live, reset to the config file's.
    Weights {
        #[command(subcommand)]
        command: WeightsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A running host's plugin versions: list, upload, activate, roll back, canary.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A running host's vendors: health over the sliding window, and their breakers.
    Vendors {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Every live host of the fleet, from any host: the control-topic offset each applied, its
    /// plugin versions, its vendors' breakers and its lanes' lag; a host behind is marked.
    Fleet {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Where the admin API of a running host is, and how to talk to it.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The admin API's URL. Else derived from --config's `admin.listen`, else
    /// http://127.0.0.1:8088.
    #[arg(
        long = "admin",
        value_name = "URL",
        env = "SWITCHBOARD_ADMIN_URL",
        global = true
    )]
    pub url: Option<String>,
    /// The bearer token changes need. Else the --config file's `admin.token`.
    #[arg(
        long,
        env = "SWITCHBOARD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// The host's config file, to find its admin API and token.
    #[arg(long, short, global = true, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the API's JSON answer instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum WeightsCommand {
    /// Print a channel's weights in force and the config file's.
    Get {
        /// The channel, e.g. `sms`.
        channel: String,
    },
    /// Change some vendors' weights; the vendors not named keep theirs. Kept across restarts.
    /// A weight of 0 drains a vendor.
    Set {
        /// The channel, e.g. `sms`.
        channel: String,
        /// New weights, e.g. `sms-twilio=70 sms-nhn=30`.
        #[arg(required = true, value_name = "VENDOR=WEIGHT", value_parser = crate::admin::client::parse_weight)]
        weights: Vec<(String, u32)>,
    },
    /// Put a channel back on the config file's weights.
    Reset {
        /// The channel, e.g. `sms`.
        channel: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginsCommand {
    /// Every plugin's active version, canary, previous and staged versions.
    List,
    /// Upload a new version of a plugin and activate it (unless --stage). A version that does
    /// not load, or serves another channel, is refused and the active version stays.
    Upload {
        /// The plugin's configured name, e.g. `fcm`.
        name: String,
        /// The component file.
        file: PathBuf,
        /// Load it without activating it.
        #[arg(long)]
        stage: bool,
    },
    /// Make a loaded version active.
    Activate {
        /// The plugin's configured name.
        name: String,
        /// The version id, as `plugins list` shows it.
        id: String,
    },
    /// End the canary if there is one, else go back to the previous version.
    Rollback {
        /// The plugin's configured name.
        name: String,
    },
    /// Send a share of a plugin's calls to a loaded version; --percent 0 ends the canary.
    Canary {
        /// The plugin's configured name.
        name: String,
        /// The version id, as `plugins list` shows it.
        #[arg(long)]
        version: Option<String>,
        /// Percent of calls, 1 to 99; 0 ends the canary.
        #[arg(long)]
        percent: u8,
    },
}

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead-lettered records, newest first: when, the reason class, the plugin, the
    /// attempts, the key and the reason. Reads the whole DLQ (progress on stderr).
    List {
        #[command(flatten)]
        select: DlqSelection,
        /// Only records with this key (a delivery's idempotency key).
        #[arg(long)]
        key: Option<String>,
        /// The most records to print.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print whole every dead-lettered record with this key: its headers and its value.
    Show {
        /// The host's config file (for the brokers and topic names).
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: PathBuf,
        /// The record's key (a delivery's idempotency key, as `dlq list` shows it).
        key: String,
        /// JSON lines, one per record, instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send dead-lettered deliveries back to their lane. They are still deduplicated, so a
    /// replay never re-sends a delivered recipient.
    Replay {
        #[command(flatten)]
        select: DlqSelection,
        /// Count what would be replayed, and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Which DLQ records a `dlq` command reads, and where the DLQ is.
#[derive(Debug, clap::Args)]
pub struct DlqSelection {
    /// The host's config file (for the brokers and topic names).
    #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
    pub config: PathBuf,
    /// Only records with this reason class.
    #[arg(long, value_enum)]
    pub reason: Option<crate::settle::ReasonClass>,
    /// Only records dead-lettered within this age: 90s, 30m, 2h, 7d, 1h 30m.
    #[arg(long, default_value = "7d")]
    pub since: String,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a config without starting anything: values, references between sections, the
    /// files and secrets it names, each plugin loaded and described, and channels against what
    /// the plugins serve. Prints every problem with its line; exits 78 if there is any.
    Check {
        /// The TOML config file.
        #[arg(env = "SWITCHBOARD_CONFIG")]
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Check a component against the switchboard:adapter world and print what `describe` says.
    Check {
        /// The component file.
        file: PathBuf,
    },
    /// Create a plugin crate that builds, checks and tests as generated.
    New {
        /// The plugin's name, e.g. `acme-sms`.
        name: String,
        /// The channel it serves: sms, push-android, push-ios, alimtalk (or another name).
        #[arg(long)]
        channel: String,
        /// Where to create it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// A local SDK to depend on: for Rust the switchboard-sdk crate (an unpacked `.crate`,
        /// a checkout's `sdk/`), for TypeScript a checkout's `sdk-ts/`. Without it, the project
        /// depends on the SDK release matching this host.
        #[arg(long)]
        sdk: Option<PathBuf>,
        /// The language: `rust` (a crate built with cargo) or `ts` (TypeScript, built with npm
        /// and `jco componentize`).
        #[arg(long, value_enum, default_value = "rust")]
        lang: crate::authoring::scaffold::Language,
    },
    /// Run a component offline against recorded vendor exchanges and print a pass/fail table.
    Test {
        /// The component file.
        file: PathBuf,
        /// The cases file (YAML).
        #[arg(long)]
        cases: PathBuf,
        /// Run the cases against the live endpoints in the cases file instead, and write the
        /// exchanges and outcomes seen back into it (or into --out).
        #[arg(long)]
        record: bool,
        /// Where --record writes; the cases file itself by default.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The exit status of a command that failed: [`EXIT_CONFIG`] when the config is at fault (it
/// does not read, parse or validate, or a secret it names is missing), else 1. Usage errors exit
/// with 2 (clap's), and a one-shot command interrupted by Ctrl-C with 130 (the signal's).
pub fn exit_code(error: &anyhow::Error) -> u8 {
    let config_fault = error.chain().any(|cause| {
        cause.is::<crate::config::ConfigError>()
            || cause.is::<ConfigProblems>()
            || matches!(
                cause.downcast_ref::<switchboard_history::HistoryError>(),
                Some(switchboard_history::HistoryError::Config { .. })
            )
    });
    if config_fault { EXIT_CONFIG } else { 1 }
}

/// `config check` found problems (already printed, one per line).
#[derive(Debug, thiserror::Error)]
#[error("{0} problem(s) in the config; each is printed above with its line")]
pub struct ConfigProblems(pub usize);

/// Exit status for a config at fault: `EX_CONFIG` of BSD's sysexits.h, which service managers
/// and scripts know as "configuration error".
pub const EXIT_CONFIG: u8 = 78;

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            embedded_test_cluster,
        } => {
            telemetry::init(cli.log_format, "info");
            let config = crate::Config::load(&config)?;
            if config.kafka.brokers.is_none() && !embedded_test_cluster {
                let path = config.source.clone().unwrap_or_default();
                let line = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| crate::config::line_of(&text, "kafka.brokers"));
                return Err(crate::config::ConfigError::Invalid {
                    line,
                    path,
                    field: "kafka.brokers".into(),
                    message: "is missing: set the cluster to consume from. Without one the host \
                              would run on librdkafka's in-process mock cluster, which keeps \
                              about 5 MiB per partition and deletes older records without a \
                              word; pass --embedded-test-cluster to run on it anyway, for a trial"
                        .into(),
                }
                .into());
            }
            crate::run(config, shutdown_signal()).await
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => {
            telemetry::init(cli.log_format, "warn");
            let report = crate::config_check::check(&file).await?;
            for note in &report.notes {
                println!("note: {note}");
            }
            for problem in &report.problems {
                println!("error: {problem}");
            }
            match report.problems.len() {
                0 => {
                    println!(
                        "ok: {}: {} plugins load and describe themselves",
                        file.display(),
                        report.plugins.len()
                    );
                    Ok(())
                }
                n => Err(ConfigProblems(n).into()),
            }
        }
        Command::Demo {
            messages,
            plugin_dir,
            vendor_latency_ms,
        } => {
            #[cfg(feature = "demo")]
            {
                // Progress lines carry the demo; host logs only say what went wrong.
                telemetry::init(cli.log_format, "warn,switchboard::host=info");
                let summary = crate::demo::run(crate::demo::DemoOptions {
                    messages,
                    plugin_dir,
                    vendor_latency: std::time::Duration::from_millis(vendor_latency_ms),
                    ..Default::default()
                })
                .await?;
                println!("{}", serde_json::to_string(&summary)?);
                anyhow::ensure!(
                    summary.lost == 0 && summary.duplicates == 0,
                    "the demo lost {} and duplicated {} deliveries",
                    summary.lost,
                    summary.duplicates
                );
                Ok(())
            }
            #[cfg(not(feature = "demo"))]
            {
                let _ = (messages, plugin_dir, vendor_latency_ms);
                anyhow::bail!(
                    "this switchboard was built without the demo and its vendor simulators: \
                     build it with `--features demo` (`make demo` does)"
                )
            }
        }
        Command::History {
            config,
            vendor,
            since,
            json,
            failures,
        } => {
            telemetry::init(cli.log_format, "warn");
            let config = crate::Config::load(&config)?;
            let since = switchboard_history::parse_since(&since)?;
            let store = config
                .history_settings()
                .open()
                .await
                .context("opening the send-history store")?
                .context("history.backend is \"off\": the host records no send history")?;
            let query = switchboard_history::HistoryQuery {
                vendor,
                since,
                until_ms: None,
            };
            let report = store.report(&query, failures).await?;
            if json {
                println!("{}", switchboard_history::render_json(&report)?);
            } else {
                print!("{}", switchboard_history::render_text(&report));
            }
            Ok(())
        }
        Command::Dlq { command } => {
            telemetry::init(cli.log_format, "warn");
            run_dlq(command).await
        }
        Command::Plugin {
            command:
                PluginCommand::New {
                    name,
                    channel,
                    dir,
                    sdk,
                    lang,
                },
        } => {
            use crate::authoring::scaffold::{self, Language};
            let root = scaffold::create(&dir, &name, &channel, sdk.as_deref(), lang)?;
            println!("created {}", root.display());
            let build = match lang {
                Language::Rust => "cargo build --release",
                Language::TypeScript => "npm install && npm run build",
            };
            println!("next: cd {} && {build}", root.display());
            Ok(())
        }
        Command::Plugin {
            command:
                PluginCommand::Test {
                    file,
                    cases,
                    record,
                    out,
                },
        } => {
            telemetry::init(cli.log_format, "warn");
            let suite = crate::authoring::offline::read_cases(&cases)?;
            if record {
                let recorded = crate::authoring::offline::record(&file, &suite).await?;
                let target = out.unwrap_or(cases);
                crate::authoring::offline::write_cases(&target, &recorded)?;
                println!(
                    "recorded {} cases into {}",
                    recorded.cases.len(),
                    target.display()
                );
                return Ok(());
            }
            let report = crate::authoring::offline::run(&file, &suite).await?;
            println!("{}", report.plugin);
            print!("{}", report.table());
            anyhow::ensure!(
                report.failed() == 0,
                "{} of {} cases failed",
                report.failed(),
                report.results.len()
            );
            Ok(())
        }
        Command::Weights { command, admin } => {
            telemetry::init(cli.log_format, "warn");
            let client = admin.client()?;
            let reply = match &command {
                WeightsCommand::Get { channel } => client.weights(channel).await?,
                WeightsCommand::Set { channel, weights } => {
                    client.set_weights(channel, weights).await?
                }
                WeightsCommand::Reset { channel } => client.reset_weights(channel).await?,
            };
            admin.print(&reply, crate::admin::client::render_weights)
        }
        Command::Plugins { command, admin } => {
            telemetry::init(cli.log_format, "warn");
            let client = admin.client()?;
            match command {
                PluginsCommand::List => {
                    let reply = client.plugins().await?;
                    admin.print(&reply, crate::admin::client::render_plugins)
                }
                PluginsCommand::Upload { name, file, stage } => {
                    let bytes = std::fs::read(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?;
                    let reply = client.upload(&name, bytes, stage).await?;
                    admin.print(&reply, crate::admin::client::render_version)
                }
                PluginsCommand::Activate { name, id } => {
                    let reply = client.activate(&name, &id).await?;
                    admin.print(&reply, crate::admin::client::render_version)
                }
                PluginsCommand::Rollback { name } => {
                    let reply = client.rollback(&name).await?;
                    admin.print(&reply, crate::admin::client::render_version)
                }
                PluginsCommand::Canary {
                    name,
                    version,
                    percent,
                } => {
                    let version = match (version, percent) {
                        (Some(version), _) => version,
                        (None, 0) => String::new(),
                        (None, _) => anyhow::bail!(
                            "--version ID is needed to start a canary (ids: `switchboard plugins list`)"
                        ),
                    };
                    let reply = client.canary(&name, &version, percent).await?;
                    admin.print(&reply, crate::admin::client::render_canary)
                }
            }
        }
        Command::Vendors { admin } => {
            telemetry::init(cli.log_format, "warn");
            let reply = admin.client()?.vendors().await?;
            admin.print(&reply, crate::admin::client::render_vendors)
        }
        Command::Fleet { admin } => {
            telemetry::init(cli.log_format, "warn");
            let reply = admin.client()?.fleet().await?;
            admin.print(&reply, crate::admin::client::render_fleet)
        }
        Command::Plugin {
            command: PluginCommand::Check { file },
        } => {
            telemetry::init(cli.log_format, "warn");
            let info = crate::plugin::check_component(&file)
                .await
                .with_context(|| format!("checking {}", file.display()))?;
            println!("ok: {} fits switchboard:adapter@0.1.0", file.display());
            println!("  name:        {}", info.name);
            println!("  version:     {}", info.version);
            println!("  channel:     {}", info.channel);
            println!("  max-batch:   {}", info.max_batch);
            println!("  wants-hosts: {}", info.wants_hosts.join(", "));
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            if let Some(stack) = crate::plugin::layout::stack_first_bytes(&bytes) {
                println!(
                    "  stack:       {} KiB, first in linear memory",
                    stack / 1024
                );
                let kept = crate::config::RuntimeConfig::default().memory_keep_resident_kib as u64;
                if let Some(warning) = crate::plugin::layout::stack_warning(stack, kept * 1024) {
                    println!("  warning:     {warning}");
                }
            }
            Ok(())
        }
    }
}

/// The config at `path` and its brokers: the DLQ is read from outside a host.
fn dlq_config(path: &std::path::Path) -> anyhow::Result<(crate::Config, String)> {
    let config = crate::Config::load(path)?;
    let brokers = config.kafka.brokers.clone().context(
        "kafka.brokers is not set: the embedded cluster lives inside a running host, so there is no DLQ to read from outside it",
    )?;
    Ok((config, brokers))
}

/// `ms` since the epoch, `since` ago (`7d`, `2h`).
fn since_ms(since: &str) -> anyhow::Result<u64> {
    let age = switchboard_history::parse_since(since)?;
    Ok(crate::clock::now_ms().saturating_sub(age.as_millis() as u64))
}

/// Progress of a DLQ read, on stderr.
fn scan_progress(read: u64, total: u64) {
    eprintln!("read {read} of {total} DLQ records…");
}

async fn run_dlq(command: DlqCommand) -> anyhow::Result<()> {
    use crate::settle::inspect;
    match command {
        DlqCommand::List {
            select,
            key,
            limit,
            json,
        } => {
            let (config, brokers) = dlq_config(&select.config)?;
            let filter = inspect::DlqFilter {
                reason: select.reason,
                since_ms: since_ms(&select.since)?,
                key,
            };
            let mut scan = inspect::DlqScan::open(
                &brokers,
                &config.kafka.dlq_topic,
                &config.kafka_properties()?,
            )?;
            let listing = inspect::list(&mut scan, &filter, limit, &mut scan_progress)?;
            match json {
                true => println!("{}", serde_json::to_string(&listing)?),
                false => print!("{}", inspect::render_listing(&listing)),
            }
            Ok(())
        }
        DlqCommand::Show { config, key, json } => {
            let (config, brokers) = dlq_config(&config)?;
            let filter = inspect::DlqFilter {
                key: Some(key.clone()),
                ..Default::default()
            };
            let mut scan = inspect::DlqScan::open(
                &brokers,
                &config.kafka.dlq_topic,
                &config.kafka_properties()?,
            )?;
            let found = inspect::show(&mut scan, &filter, &mut scan_progress)?;
            anyhow::ensure!(
                !found.is_empty(),
                "no record with key `{key}` in {} ({} read)",
                config.kafka.dlq_topic,
                scan.read
            );
            for record in &found {
                match json {
                    true => {
                        let value = String::from_utf8_lossy(&record.payload);
                        let mut line = serde_json::to_value(record)?;
                        line["value"] = serde_json::Value::String(value.into_owned());
                        println!("{line}");
                    }
                    false => print!("{}", inspect::render_record(record)),
                }
            }
            Ok(())
        }
        DlqCommand::Replay { select, dry_run } => {
            let (config, brokers) = dlq_config(&select.config)?;
            let filter = crate::settle::replay::ReplayFilter {
                reason: select.reason,
                since_ms: since_ms(&select.since)?,
                dry_run,
            };
            let outbox = crate::settle::Outbox::connect(
                &brokers,
                &config.kafka.retry_topic,
                &config.kafka.dlq_topic,
                &config.kafka_properties()?,
            )?
            .with_retry_tiers(config.kafka.retry_topics());
            eprintln!("reading {} from {brokers}…", config.kafka.dlq_topic);
            let summary = crate::settle::replay::replay_with_progress(
                &brokers,
                &config.kafka.dlq_topic,
                &config.kafka_properties()?,
                &outbox,
                &filter,
                crate::settle::inspect::PROGRESS_EVERY,
                &mut |read, total, so_far| {
                    eprintln!(
                        "read {read} of {total} DLQ records; {} to the retry topic, {} to their \
                         origin topic, {} not replayable so far…",
                        so_far.to_retry_topic, so_far.to_origin_topic, so_far.not_replayable
                    );
                },
            )
            .await?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
    }
}

impl AdminArgs {
    fn client(&self) -> anyhow::Result<crate::admin::client::AdminClient> {
        crate::admin::client::AdminClient::resolve(
            self.url.as_deref(),
            self.token.as_deref(),
            self.config.as_deref(),
        )
    }

    /// Prints `reply` as JSON with --json, else as `render` draws it.
    fn print(
        &self,
        reply: &serde_json::Value,
        render: fn(&serde_json::Value) -> String,
    ) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(reply)?);
        } else {
            print!("{}", render(reply));
        }
        Ok(())
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
