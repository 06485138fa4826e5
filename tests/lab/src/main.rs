//! `switchboard-lab`: scenarios that measure Switchboard's promises against the real host,
//! embedded Kafka and the vendor simulators. Progress goes to stderr; the last line on stdout is
//! one JSON object with the figures. Build with `cargo build --release -p switchboard-lab`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::json;
use switchboard::contract::Outcome;
use switchboard_integration_tests::{LoadOptions, delivery, load, runtime};

mod broker;
mod broker_restart;
mod ceiling;
mod cpu;
mod crash;
mod dedup;
mod fleet;
mod lanes;
mod operations;
mod poison;
mod rebalance;
mod retry_tiers;
mod sandbox;
mod throughput;
mod typescript;

#[derive(Parser)]
#[command(name = "switchboard-lab", about)]
struct Lab {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// The demo: N requests through embedded Kafka, the FCM plugin and the FCM simulator.
    Demo {
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        vendor_latency_ms: u64,
    },
    /// Dedup store cost: resident bytes per key (from process RSS before and after), inserts
    /// and lookups per second for the embedded store; bytes per key in Redis from its own
    /// `INFO memory`.
    Dedup {
        #[arg(long, default_value_t = 10_000_000)]
        keys: u64,
        /// Keys for the Redis measurement.
        #[arg(long, default_value_t = 1_000_000)]
        redis_keys: u64,
        /// Redis URL; without one (and without SWITCHBOARD_TEST_REDIS) Redis is not measured.
        #[arg(long, env = "SWITCHBOARD_TEST_REDIS")]
        redis: Option<String>,
    },
    /// The sandbox's cost per call: a fresh instance, `init`, and `deliver` of one delivery,
    /// with a guest that does no I/O, so only the runtime is measured. Also a batch of 100.
    Runtime {
        #[arg(long, default_value = "build/guests/misbehave.wasm")]
        guest: PathBuf,
        #[arg(long, default_value_t = 20_000)]
        calls: u64,
    },
    /// An adapter in TypeScript next to the same in Rust: per-call runtime cost (test guests
    /// with no I/O), component sizes, and the pipeline rate through each Twilio adapter.
    Typescript {
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        #[arg(long, default_value_t = 5_000)]
        calls: u64,
        #[arg(long, default_value = "build/guests/misbehave.wasm")]
        rust_guest: PathBuf,
        #[arg(long, default_value = "build/guests/hostile_ts.wasm")]
        ts_guest: PathBuf,
        #[arg(long, default_value = "build/plugins/sms-twilio.wasm")]
        rust_adapter: PathBuf,
        #[arg(long, default_value = "examples/twilio-ts/dist/sms_twilio_ts.wasm")]
        ts_adapter: PathBuf,
        #[arg(long, default_value_t = 20)]
        vendor_latency_ms: u64,
        /// The batch lane's linger, in milliseconds (the default config's is 5).
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
    },
    /// Crash recovery: the host as a child process, SIGKILLed while deliveries are in flight and
    /// restarted; counts what was lost and what was sent twice.
    Crash {
        #[arg(long, default_value_t = 5)]
        kills: u32,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        vendor_latency_ms: u64,
        /// Seed of the kill moments (printed on stderr when not given).
        #[arg(long)]
        seed: Option<u64>,
        /// Seconds to wait for the last request after the last restart.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        #[command(flatten)]
        kafka: broker::KafkaChoice,
    },
    /// Rebalance under load: three host processes in one consumer group; B joins while A
    /// delivers, then C, then A and B leave; once with per-host embedded dedup and once with
    /// shared Redis dedup.
    Rebalance {
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        vendor_latency_ms: u64,
        /// Requests produced per second.
        #[arg(long, default_value_t = 2_000)]
        rate: u64,
        /// Redis URL the hosts share in the shared-dedup run.
        #[arg(long, env = "SWITCHBOARD_TEST_REDIS")]
        redis: Option<String>,
        /// Seconds to wait for the last request, per run.
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
        #[command(flatten)]
        kafka: broker::KafkaChoice,
        /// Each host's own embedded dedup store, the Redis store they share, or one run of each.
        #[arg(long, value_enum, default_value_t = rebalance::DedupChoice::Both)]
        dedup: rebalance::DedupChoice,
    },
    /// Host processes in one fleet on a real broker, under load: how long a weight change and
    /// a plugin upload, made through one host, take to reach every host, and how long a host
    /// that joins late takes to be on the fleet's state.
    Fleet {
        #[arg(long, default_value_t = 3)]
        hosts: usize,
        /// Requests produced per second, the whole run.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value_t = 6)]
        weight_changes: u32,
        #[arg(long, default_value_t = 3)]
        plugin_swaps: u32,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value_t = 5)]
        vendor_latency_ms: u64,
        /// The Kafka to run on: a real broker (the default), or the in-process mock cluster.
        #[arg(long, value_enum, default_value_t = broker::BrokerKind::Real)]
        broker: broker::BrokerKind,
        /// The real broker's address (else SWITCHBOARD_TEST_KAFKA, else 127.0.0.1:19092).
        #[arg(long)]
        brokers: Option<String>,
    },
    /// Realtime against an ads backlog: the backlog drains through the ads lane while realtime
    /// requests arrive on their own lane; produce-to-vendor latency of realtime, host memory.
    Isolation {
        #[arg(long, default_value_t = 2_000_000)]
        backlog: u64,
        /// Realtime requests per second.
        #[arg(long, default_value_t = 50)]
        realtime_rate: u64,
        #[arg(long, default_value_t = 60)]
        duration_s: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        vendor_latency_ms: u64,
        /// Extra settings for the ads lane, as TOML lines (e.g. "concurrency = 8").
        #[arg(long, default_value = "")]
        ads_lane: String,
        /// Extra settings for the realtime lane, as TOML lines (e.g. "fetch_wait_max_ms = 2").
        #[arg(long, default_value = "")]
        realtime_lane: String,
        #[command(flatten)]
        kafka: broker::KafkaChoice,
        /// More host config, as whole TOML tables ("\n" for a new line), e.g.
        /// "[runtime]\nbulk_nice = 0".
        #[arg(long, default_value = "")]
        host_toml: String,
        /// Partitions of each topic (else enough for the backlog: one per 15,000 records, at
        /// least 12). A real broker's cost per fetch can grow with them, apart from the backlog.
        #[arg(long)]
        partitions: Option<i32>,
    },
    /// Hostile records interleaved with valid requests: every valid one delivered once, every
    /// hostile one in the DLQ, and the valid rate against a clean run in the same process.
    Poison {
        #[arg(long, default_value_t = 20_000)]
        valid: u64,
        /// How many times each kind of hostile record appears.
        #[arg(long, default_value_t = 5)]
        rounds: u64,
    },
    /// A real broker killed with SIGKILL mid-stream and restarted on its storage, a few times:
    /// what was lost and sent twice.
    BrokerRestart {
        #[arg(long, default_value_t = 2)]
        restarts: u32,
        #[arg(long, default_value_t = 50_000)]
        messages: u64,
        #[arg(long, default_value_t = 5)]
        vendor_latency_ms: u64,
        /// Seconds the broker stays down each time.
        #[arg(long, default_value_t = 3)]
        down_s: u64,
        /// The broker binary (else SWITCHBOARD_TEST_BROKER_BIN, else where `make broker` puts it).
        #[arg(long)]
        broker_bin: Option<PathBuf>,
        #[arg(long, default_value_t = 600)]
        timeout_s: u64,
    },
    /// Requests of 1,000 recipients with a large content: how far the process's peak memory
    /// grows while they are delivered.
    Fanout {
        #[arg(long, default_value_t = 100)]
        records: u64,
        /// Content bytes per request; FCM refuses messages over 4,096 bytes.
        #[arg(long, default_value_t = 3000)]
        content_bytes: usize,
    },
    /// One pass of `fanout`, in a process of its own so that its peak memory is its own.
    #[command(hide = true)]
    FanoutPass {
        #[arg(long)]
        records: u64,
        #[arg(long)]
        recipients: u64,
        #[arg(long)]
        content_bytes: usize,
    },
    /// Retries due soon behind retries due later in the same partition: when the soon ones are
    /// delivered, with one retry topic and with retry tiers, in the same process.
    RetryTiers {
        /// At most the slow vendor's calls at once times its batch (8 × 10): a vendor's
        /// Retry-After holds every later call to it, so more would come back in waves.
        #[arg(long, default_value_t = 80)]
        later: u64,
        #[arg(long, default_value_t = 200)]
        soon: u64,
        /// When the later retries are due, in seconds.
        #[arg(long, default_value_t = 30)]
        later_s: u64,
    },
    /// Expired requests in front of valid ones: how fast they are dead-lettered, and when the
    /// valid ones behind them are delivered.
    ExpiredBacklog {
        #[arg(long, default_value_t = 100_000)]
        expired: u64,
        #[arg(long, default_value_t = 2_000)]
        valid: u64,
    },
    /// A deep backlog drained from the start: drain rate and the host's peak memory.
    Backlog {
        #[arg(long, default_value_t = 2_000_000)]
        records: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        vendor_latency_ms: u64,
        /// Stop measuring after this long, drained or not.
        #[arg(long, default_value_t = 1200)]
        timeout_s: u64,
    },
    /// The pipeline's rate on a backlog with the FCM adapter as a component, the same adapter
    /// compiled natively (what the sandbox costs), and a bare consumer (the ceiling).
    Throughput {
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        vendor_latency_ms: u64,
        #[command(flatten)]
        kafka: broker::KafkaChoice,
        /// Rounds of component, native and bare client, one after the other; the line reports
        /// the round with the median CPU ratio, and every round's ratio. On a shared machine the
        /// cost of a microsecond drifts from minute to minute, and one round's ratio with it.
        #[arg(long, default_value_t = 3)]
        rounds: u32,
    },
    /// A vendor outage: steady SMS traffic split 50/50 while one vendor answers 503 for the
    /// first half of `--down-s`, then refuses connections. Ejection and restore times,
    /// failovers, and what was lost or sent twice across both vendors.
    Outage {
        #[arg(long, default_value = "sms-twilio")]
        vendor: String,
        #[arg(long, default_value_t = 30)]
        down_s: u64,
        /// Requests per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
    },
    /// Hot swap under load: a backlog drained while the FCM plugin is swapped between two
    /// versions `--swaps` times. Activation time, and what was lost or sent twice.
    Hotswap {
        #[arg(long, default_value_t = 10)]
        swaps: u32,
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
    },
    /// A canary that fails 30 % of deliveries takes `--percent` of calls under steady traffic;
    /// how long until it is rolled back automatically.
    Canary {
        #[arg(long, default_value_t = 10)]
        percent: u8,
        /// Requests per second.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Seconds of traffic.
        #[arg(long, default_value_t = 20)]
        duration_s: u64,
        #[arg(long, default_value = "build/guests")]
        guest_dir: PathBuf,
    },
    /// The component pipeline's rate and host CPU per delivery against the shape of the load:
    /// recipients per request (1, 10, 100, 1,000) and channels at once (1, 2, 4).
    Scaling {
        /// Deliveries per point.
        #[arg(long, default_value_t = 100_000)]
        messages: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        vendor_latency_ms: u64,
        #[command(flatten)]
        kafka: broker::KafkaChoice,
    },
    /// The pipeline's rate on 1 partition against 12, with key ordering and a key per record.
    Partitions {
        #[arg(long, default_value_t = 200_000)]
        messages: u64,
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value_t = 20)]
        vendor_latency_ms: u64,
        #[command(flatten)]
        kafka: broker::KafkaChoice,
    },
    /// Hostile plugins (loops, bombs, traps, floods, denied hosts and secrets, WASI probes,
    /// slow vendors, wrong worlds) against the runtime while the FCM plugin carries steady
    /// traffic; the neighbour's latency alone and under attack.
    Sandbox {
        #[arg(long, default_value = "build/plugins")]
        plugin_dir: PathBuf,
        #[arg(long, default_value = "build/guests")]
        guest_dir: PathBuf,
        /// Neighbour calls per second.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Seconds of neighbour traffic alone, for the baseline.
        #[arg(long, default_value_t = 10)]
        baseline_s: u64,
        /// Times the list of hostile cases runs (about 5 s each).
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        #[arg(long, default_value_t = 0)]
        vendor_latency_ms: u64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    switchboard::telemetry::init(switchboard::telemetry::LogFormat::Text, "warn");
    let line = match Lab::parse().scenario {
        Scenario::Demo {
            messages,
            plugin_dir,
            vendor_latency_ms,
        } => {
            let summary = switchboard::demo::run(switchboard::demo::DemoOptions {
                messages,
                plugin_dir,
                vendor_latency: Duration::from_millis(vendor_latency_ms),
                ..Default::default()
            })
            .await?;
            serde_json::to_value(summary)?
        }
        Scenario::Runtime { guest, calls } => runtime_cost(&guest, calls).await?,
        Scenario::Typescript {
            messages,
            calls,
            rust_guest,
            ts_guest,
            rust_adapter,
            ts_adapter,
            vendor_latency_ms,
            linger_ms,
        } => {
            typescript::run(typescript::TypeScriptOptions {
                linger_ms,
                messages,
                calls,
                rust_guest,
                ts_guest,
                rust_adapter,
                ts_adapter,
                vendor_latency_ms,
            })
            .await?
        }
        Scenario::Poison { valid, rounds } => poison::poison(valid, rounds).await?,
        Scenario::Fanout {
            records,
            content_bytes,
        } => poison::fanout(records, content_bytes).await?,
        Scenario::BrokerRestart {
            restarts,
            messages,
            vendor_latency_ms,
            down_s,
            broker_bin,
            timeout_s,
        } => {
            broker_restart::run(broker_restart::BrokerRestartOptions {
                restarts,
                messages,
                vendor_latency_ms,
                down: Duration::from_secs(down_s),
                broker_bin: broker_bin.unwrap_or_else(broker_restart::default_broker_bin),
                timeout: Duration::from_secs(timeout_s),
            })
            .await?
        }
        Scenario::FanoutPass {
            records,
            recipients,
            content_bytes,
        } => poison::fanout_pass(records, recipients, content_bytes).await?,
        Scenario::RetryTiers {
            later,
            soon,
            later_s,
        } => retry_tiers::run(later, soon, later_s).await?,
        Scenario::ExpiredBacklog { expired, valid } => {
            poison::expired_backlog(expired, valid).await?
        }
        Scenario::Dedup {
            keys,
            redis_keys,
            redis,
        } => dedup::measure(keys, redis_keys, redis.as_deref()).await?,
        Scenario::Crash {
            kills,
            messages,
            plugin_dir,
            vendor_latency_ms,
            seed,
            timeout_s,
            kafka,
        } => {
            crash::run(crash::CrashOptions {
                kills,
                messages,
                plugin_dir,
                vendor_latency_ms,
                seed,
                timeout: Duration::from_secs(timeout_s),
                broker: kafka.broker,
                brokers: kafka.brokers,
            })
            .await?
        }
        Scenario::Rebalance {
            messages,
            plugin_dir,
            vendor_latency_ms,
            rate,
            redis,
            timeout_s,
            kafka,
            dedup,
        } => {
            rebalance::run(rebalance::RebalanceOptions {
                messages,
                plugin_dir,
                vendor_latency_ms,
                rate,
                redis,
                timeout: Duration::from_secs(timeout_s),
                broker: kafka.broker,
                brokers: kafka.brokers,
                dedup,
            })
            .await?
        }
        Scenario::Sandbox {
            plugin_dir,
            guest_dir,
            rate,
            baseline_s,
            rounds,
            vendor_latency_ms,
        } => {
            sandbox::run(sandbox::SandboxOptions {
                plugin_dir,
                guest_dir,
                rate,
                baseline_s,
                rounds,
                vendor_latency_ms,
            })
            .await?
        }
        Scenario::Fleet {
            hosts,
            rate,
            weight_changes,
            plugin_swaps,
            plugin_dir,
            vendor_latency_ms,
            broker,
            brokers,
        } => {
            fleet::run(fleet::FleetOptions {
                hosts,
                rate_per_s: rate,
                weight_changes,
                plugin_swaps,
                plugin_dir,
                vendor_latency_ms,
                broker,
                brokers,
            })
            .await?
        }
        Scenario::Isolation {
            backlog,
            realtime_rate,
            duration_s,
            plugin_dir,
            vendor_latency_ms,
            ads_lane,
            realtime_lane,
            kafka,
            host_toml,
            partitions,
        } => {
            lanes::isolation(lanes::IsolationOptions {
                backlog,
                realtime_rate,
                duration: Duration::from_secs(duration_s),
                plugin_dir,
                vendor_latency_ms,
                ads_lane: ads_lane.replace("\\n", "\n"),
                realtime_lane: realtime_lane.replace("\\n", "\n"),
                broker: kafka.broker,
                brokers: kafka.brokers,
                host_toml: host_toml.replace("\\n", "\n"),
                partitions,
            })
            .await?
        }
        Scenario::Backlog {
            records,
            plugin_dir,
            vendor_latency_ms,
            timeout_s,
        } => {
            lanes::backlog(lanes::BacklogOptions {
                records,
                plugin_dir,
                vendor_latency_ms,
                timeout: Duration::from_secs(timeout_s),
            })
            .await?
        }
        Scenario::Outage {
            vendor,
            down_s,
            rate,
            plugin_dir,
        } => {
            operations::outage(operations::OutageOptions {
                vendor,
                down_s,
                rate,
                plugin_dir,
            })
            .await?
        }
        Scenario::Hotswap {
            swaps,
            messages,
            plugin_dir,
        } => {
            operations::hotswap(operations::HotswapOptions {
                swaps,
                messages,
                plugin_dir,
            })
            .await?
        }
        Scenario::Canary {
            percent,
            rate,
            duration_s,
            guest_dir,
        } => {
            operations::canary(operations::CanaryOptions {
                percent,
                rate,
                duration_s,
                guest_dir,
            })
            .await?
        }
        Scenario::Throughput {
            messages,
            plugin_dir,
            vendor_latency_ms,
            kafka,
            rounds,
        } => {
            throughput::throughput(
                throughput::ThroughputOptions {
                    messages,
                    plugin_dir,
                    vendor_latency_ms,
                    kafka,
                },
                rounds,
            )
            .await?
        }
        Scenario::Scaling {
            messages,
            plugin_dir,
            vendor_latency_ms,
            kafka,
        } => {
            throughput::scaling(throughput::ThroughputOptions {
                messages,
                plugin_dir,
                vendor_latency_ms,
                kafka,
            })
            .await?
        }
        Scenario::Partitions {
            messages,
            plugin_dir,
            vendor_latency_ms,
            kafka,
        } => {
            throughput::partitions(throughput::ThroughputOptions {
                messages,
                plugin_dir,
                vendor_latency_ms,
                kafka,
            })
            .await?
        }
    };
    println!("{line}");
    Ok(())
}

async fn runtime_cost(guest: &std::path::Path, calls: u64) -> anyhow::Result<serde_json::Value> {
    let rt = runtime();
    // 64 MiB: a JavaScript engine's heap needs more than the 32 MiB a Rust guest is given.
    let options = LoadOptions {
        memory_mb: 64,
        ..LoadOptions::default()
    };
    let plugin = load(&rt, "misbehave", guest, options)
        .await
        .with_context(|| format!("loading {}", guest.display()))?;
    let one = [delivery("k/0", "ok", "{}")];
    let hundred: Vec<_> = (0..100)
        .map(|i| delivery(&format!("k/{i}"), "ok", "{}"))
        .collect();
    // Warm-up: the first calls fault in the pool's memory slots.
    for _ in 0..200 {
        plugin.deliver(&one).await?;
    }
    let mut single = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for i in 0..calls {
        let t = Instant::now();
        let outcomes = plugin.deliver(&one).await?;
        single.record(t.elapsed().as_nanos() as u64)?;
        anyhow::ensure!(
            matches!(outcomes[0], Outcome::Delivered(_)),
            "call {i}: {outcomes:?}"
        );
        if i.is_multiple_of(5000) && i > 0 {
            eprintln!("[runtime] {i}/{calls} single-delivery calls");
        }
    }
    let single_total = started.elapsed();
    let batch_calls = (calls / 10).max(10);
    let mut batch = Histogram::<u64>::new(3)?;
    for _ in 0..batch_calls {
        let t = Instant::now();
        plugin.deliver(&hundred).await?;
        batch.record(t.elapsed().as_nanos() as u64)?;
    }
    let us = |ns: u64| (ns as f64 / 1000.0 * 10.0).round() / 10.0;
    Ok(json!({
        "scenario": "runtime",
        "calls": calls,
        "per_call_us_mean": us((single_total.as_nanos() / u128::from(calls.max(1))) as u64),
        "per_call_us_p50": us(single.value_at_quantile(0.5)),
        "per_call_us_p99": us(single.value_at_quantile(0.99)),
        "batch": 100,
        "batch_call_us_p50": us(batch.value_at_quantile(0.5)),
        "per_delivery_us_in_batch": us(batch.value_at_quantile(0.5) / 100),
    }))
}
