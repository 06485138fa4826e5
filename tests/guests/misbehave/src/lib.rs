//! A test adapter that does what each delivery's recipient says:
//!
//! - `ok` → delivered;
//! - `loop` → spins forever (the host's deadline must stop it);
//! - `trap` → panics, which traps the instance;
//! - `grow:MIB` → allocates and touches MIB mebibytes (the memory cap must stop it);
//! - `http:URL` → GETs URL through the host, with a header naming secret `token`
//!   (`delivered(status)`, or `rejected("http", error)`);
//! - `sign:KEY` → signs with secret KEY as HS256 (`delivered`, or `rejected("sign", error)`);
//! - `count` → increments a counter in the host cache and returns it (`delivered(n)`);
//! - `ncp:KEY` → signs `GET https://sens.example/api?q=1` NCP-style with secret KEY at a fixed
//!   time and returns the signature header (`delivered(signature)`);
//! - `recurse` → recurses without end (the wasm stack limit must stop it);
//! - `bigstring:MIB` → builds a string of MIB mebibytes to return (the memory cap must stop it);
//! - `echo:NAME@URL` → GETs URL through the host with header `x-token: {{secret:NAME}}` and
//!   returns the response body (`delivered(body)`, or `rejected("http", error)`);
//! - `clockspin` → spins reading the wall and monotonic clocks (the deadline must stop it);
//! - `sleep:MS` → sleeps MS milliseconds through WASI's clock (the deadline must stop it);
//! - `cachekeys:MIB:N` → stores N cache entries (distinct per delivery key) whose keys are MIB
//!   mebibytes each, with a one-byte value (`delivered(N)`);
//! - `sendall:N@URL` → GETs URL N times in one `send-all` and returns how the requests ended,
//!   `ok=… denied=… timeout=… connect=… protocol=…`;
//! - `logs:N` → logs N lines of 100 bytes (`delivered(N)`);
//! - `retry-once:MS` → on the first attempt, `retry` no sooner than MS milliseconds (as a
//!   vendor's Retry-After says); on later attempts, delivered;
//! - `wasi:HOST:PORT` → tries the filesystem, environment, sockets (a TCP connection to
//!   HOST:PORT), clocks and randomness and returns a JSON report of what worked
//!   (`delivered(report)`).
//! - `residue:write:MIB` → fills MIB mebibytes of fresh heap with a marker and leaves them
//!   allocated (`delivered("wrote")`);
//! - `residue:scan:MIB` → grows memory by MIB mebibytes without writing to it, then counts the
//!   marker's words anywhere in linear memory (`delivered(count)`): an earlier call's marker
//!   found here is memory the host did not reset between instances.
//!
//! Two verbs answer for the whole batch, when they are the first delivery's recipient:
//! - `flood:N` → returns N outcomes, however many deliveries there were;
//! - `alias:MIB:N` → returns N outcomes whose messages all point at one MIB-mebibyte string in
//!   guest memory, so N copies are lifted out of one allocation.
//!
//! Config `init` chooses how `init` behaves: `fail` refuses, `loop` spins forever (so the host
//! must refuse the plugin at load), `loop-on-calls` lets the load-time `init` through (it leaves
//! a flag in the cache) and spins on every later call's `init`, `trap` panics.

use switchboard_sdk::http::{self, Request};
use switchboard_sdk::secrets::{self, Algorithm};
use switchboard_sdk::{Adapter, Config, Delivery, Outcome, PluginInfo, PluginInfoExt, cache};

struct Misbehave;

impl Adapter for Misbehave {
    fn describe() -> PluginInfo {
        PluginInfo::new("misbehave", env!("CARGO_PKG_VERSION"), "test").max_batch(10)
    }

    fn init(config: Config) -> Result<Self, String> {
        match config.get("init") {
            Some("fail") => Err("init told to fail".into()),
            Some("loop") => spin(),
            // The host runs `init` once at load and again on every call; the cache, which
            // outlives instances, tells the two apart.
            Some("loop-on-calls") => {
                if cache::get("loaded").is_some() {
                    spin()
                }
                cache::set("loaded", b"1", 3_600_000);
                Ok(Misbehave)
            }
            Some("trap") => panic!("init told to trap"),
            _ => Ok(Misbehave),
        }
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        let first = batch.first().map(|d| d.recipient.as_str()).unwrap_or("");
        if let Some(n) = first.strip_prefix("flood:") {
            return flood(n.parse().unwrap_or(1));
        }
        if let Some(arg) = first.strip_prefix("alias:") {
            let (mib, n) = arg.split_once(':').unwrap_or((arg, "1"));
            return alias(mib.parse().unwrap_or(1), n.parse().unwrap_or(1));
        }
        batch.iter().map(act).collect()
    }
}

fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn flood(n: usize) -> Vec<Outcome> {
    // Empty messages allocate nothing, so the whole memory cap goes to the list itself.
    (0..n).map(|_| Outcome::delivered(String::new())).collect()
}

fn alias(mib: usize, n: usize) -> Vec<Outcome> {
    let text = "x".repeat(mib << 20);
    let (ptr, len) = (text.as_ptr() as *mut u8, text.len());
    std::mem::forget(text);
    (0..n)
        .map(|_| {
            // SAFETY: deliberately unsound aliasing: every outcome claims the same buffer, as a
            // hostile component writing the canonical ABI by hand would. The instance is thrown
            // away after the call, so the double frees in post-return touch nothing that lives on.
            let shared = unsafe { String::from_raw_parts(ptr, len, len) };
            Outcome::delivered(shared)
        })
        .collect()
}

#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if frame[0] == u64::MAX {
        return 0;
    }
    // Using the result after the call keeps it from becoming a tail call or a loop.
    recurse(frame[0] + 1).wrapping_add(frame[63])
}

fn act(delivery: &Delivery) -> Outcome {
    let (verb, arg) = delivery
        .recipient
        .split_once(':')
        .unwrap_or((delivery.recipient.as_str(), ""));
    match verb {
        "ok" => Outcome::delivered(format!("ok-{}", delivery.key)),
        "loop" => spin(),
        "trap" => panic!("trap requested by the test"),
        "grow" => {
            let mib: usize = arg.parse().unwrap_or(1);
            let mut v: Vec<u8> = Vec::with_capacity(mib << 20);
            v.resize(mib << 20, 1);
            Outcome::delivered(format!("grew {}", std::hint::black_box(v).len()))
        }
        "http" => {
            let request = Request::new("GET", arg).header("x-token", secrets::placeholder("token"));
            match http::send(request) {
                Ok(response) => Outcome::delivered(response.status.to_string()),
                Err(error) => Outcome::rejected("http", format!("{error:?}")),
            }
        }
        "sign" => match secrets::sign(arg, Algorithm::Hs256, b"data") {
            Ok(signature) => Outcome::delivered(format!("{} bytes", signature.len())),
            Err(error) => Outcome::rejected("sign", error),
        },
        "count" => {
            let n = cache::get("count")
                .and_then(|b| String::from_utf8(b).ok())
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
                + 1;
            cache::set("count", n.to_string().as_bytes(), 60_000);
            Outcome::delivered(n.to_string())
        }
        "ncp" => {
            let request = Request::new("GET", "https://sens.example/api?q=1");
            match switchboard_sdk::auth::sign_ncp_at(request, "ACCESSKEY", arg, 1_700_000_000_000) {
                Ok(signed) => signed
                    .headers
                    .iter()
                    .find(|(name, _)| name == switchboard_sdk::auth::NCP_SIGNATURE_HEADER)
                    .map(|(_, value)| Outcome::delivered(value.clone()))
                    .unwrap_or_else(|| Outcome::rejected("ncp", "no signature header")),
                Err(error) => Outcome::rejected("ncp", error),
            }
        }
        "recurse" => Outcome::delivered(recurse(0).to_string()),
        "bigstring" => {
            let mib: usize = arg.parse().unwrap_or(1);
            let mut text = String::new();
            let chunk = "y".repeat(1 << 20);
            for _ in 0..mib {
                text.push_str(&chunk);
            }
            Outcome::delivered(text)
        }
        "echo" => {
            let (secret, url) = arg.split_once('@').unwrap_or(("token", arg));
            let request = Request::new("GET", url).header("x-token", secrets::placeholder(secret));
            match http::send(request) {
                Ok(response) => {
                    Outcome::delivered(String::from_utf8_lossy(&response.body).into_owned())
                }
                Err(error) => Outcome::rejected("http", format!("{error:?}")),
            }
        }
        "clockspin" => {
            let started = std::time::Instant::now();
            let mut reads: u64 = 0;
            while started.elapsed() < std::time::Duration::from_secs(3600) {
                reads += u64::from(std::time::SystemTime::now() > std::time::UNIX_EPOCH);
            }
            Outcome::delivered(reads.to_string())
        }
        "sleep" => {
            let ms: u64 = arg.parse().unwrap_or(3_600_000);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Outcome::delivered(format!("slept {ms} ms"))
        }
        "cachekeys" => {
            let (mib, n) = arg.split_once(':').unwrap_or((arg, "1"));
            let (mib, n): (usize, usize) = (mib.parse().unwrap_or(1), n.parse().unwrap_or(1));
            let filler = mib << 20;
            // One buffer, reused: the guest needs MIB mebibytes whatever N is.
            let mut key = String::with_capacity(filler + 64);
            key.push_str(&"k".repeat(filler));
            for i in 0..n {
                // Distinct per delivery key and index, so every set adds an entry.
                key.truncate(filler);
                key.push_str(&format!("/{}/{i}", delivery.key));
                cache::set(&key, b"1", 3_600_000);
            }
            Outcome::delivered(n.to_string())
        }
        "residue" => residue(arg),
        "wasi" => Outcome::delivered(wasi_report(arg)),
        "sendall" => {
            let (n, url) = arg.split_once('@').unwrap_or(("1", arg));
            let requests = (0..n.parse::<usize>().unwrap_or(1))
                .map(|_| Request::new("GET", url))
                .collect();
            let (mut ok, mut denied, mut timeout, mut connect, mut protocol) = (0, 0, 0, 0, 0);
            for result in http::send_all(requests) {
                match result {
                    Ok(_) => ok += 1,
                    Err(http::HttpError::Denied(_)) => denied += 1,
                    Err(http::HttpError::Timeout) => timeout += 1,
                    Err(http::HttpError::Connect(_)) => connect += 1,
                    Err(http::HttpError::Protocol(_)) => protocol += 1,
                }
            }
            Outcome::delivered(format!(
                "ok={ok} denied={denied} timeout={timeout} connect={connect} protocol={protocol}"
            ))
        }
        "retry-once" if delivery.attempt <= 1 => {
            Outcome::retry("told to come back later", Some(arg.parse().unwrap_or(1000)))
        }
        "retry-once" => Outcome::delivered(format!("ok-{}", delivery.key)),
        "logs" => {
            let n: usize = arg.parse().unwrap_or(1);
            let line = "l".repeat(100);
            for _ in 0..n {
                switchboard_sdk::log::info(&line);
            }
            Outcome::delivered(n.to_string())
        }
        other => Outcome::rejected("unknown-verb", other.to_string()),
    }
}

/// What the WASI context lets the guest do, as JSON: each probe is `"ok: …"` or `"err: …"`.
/// `arg` is a loopback `host:port` to try a TCP connection to.
fn wasi_report(arg: &str) -> String {
    fn probe<T>(result: std::io::Result<T>, show: impl Fn(T) -> String) -> serde_json::Value {
        match result {
            Ok(value) => format!("ok: {}", show(value)).into(),
            Err(error) => format!("err: {error}").into(),
        }
    }
    let target = if arg.is_empty() { "127.0.0.1:80" } else { arg };
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let started = std::time::Instant::now();
    let monotonic = std::hint::black_box(started).elapsed();
    // Hash keys come from WASI's random source; two fresh instances differ only if it is real.
    let random_sample = {
        use std::hash::BuildHasher;
        std::hash::RandomState::new().hash_one(1u8)
    };
    serde_json::json!({
        "read_etc_passwd": probe(std::fs::read("/etc/passwd"), |b| format!("{} bytes", b.len())),
        "list_root": probe(std::fs::read_dir("/"), |d| format!("{} entries", d.count())),
        "list_cwd": probe(std::fs::read_dir("."), |d| format!("{} entries", d.count())),
        "write_tmp": probe(std::fs::write("/tmp/switchboard-guest", b"x"), |_| String::new()),
        "current_dir": probe(std::env::current_dir(), |p| p.display().to_string()),
        "env_vars": std::env::vars_os().count(),
        "args": std::env::args_os().count(),
        "tcp_connect": probe(std::net::TcpStream::connect(target), |_| target.to_string()),
        "udp_bind": probe(std::net::UdpSocket::bind("127.0.0.1:0"), |_| String::new()),
        "dns": probe(
            std::net::ToSocketAddrs::to_socket_addrs(&("localhost", 80)),
            |a| format!("{} addresses", a.count()),
        ),
        "wall_clock_s": wall,
        "monotonic_ok": monotonic < std::time::Duration::from_secs(60),
        "random_sample": random_sample.to_string(),
    })
    .to_string()
}

switchboard_sdk::export_adapter!(Misbehave);

/// The marker's complement. A scanning call makes the marker (`!RESIDUE_MASK`) only in a
/// register, so it cannot find a copy of its own; wasm code is not in linear memory. (A writing
/// call does leave one on its stack, which is residue like the rest.)
const RESIDUE_MASK: u64 = 0x5A5A_0123_4567_89AB;

fn residue(arg: &str) -> Outcome {
    let (mode, mib) = arg.split_once(':').unwrap_or((arg, "1"));
    let words = mib.parse::<usize>().unwrap_or(1) << 17;
    match mode {
        "write" => {
            let mut marked: Vec<u64> = Vec::with_capacity(words);
            for _ in 0..words {
                marked.push(std::hint::black_box(!RESIDUE_MASK));
            }
            std::mem::forget(marked);
            Outcome::delivered("wrote")
        }
        "scan" => {
            #[cfg(target_arch = "wasm32")]
            {
                let pages = words * 8 / 65536;
                // A grow refused under the memory cap would leave the earlier call's pages out
                // of the scan, and a count of 0 would prove nothing.
                if core::arch::wasm32::memory_grow(0, pages) == usize::MAX {
                    return Outcome::rejected(
                        "residue",
                        format!("could not grow by {pages} pages"),
                    );
                }
                let end = core::arch::wasm32::memory_size(0) * 65536;
                // From the first word past address 0 (a null pointer in Rust) to the end.
                let found = (8..end)
                    .step_by(8)
                    .filter(|&address| {
                        // SAFETY: every address below `memory_size` is readable linear memory.
                        let word = unsafe { core::ptr::read_volatile(address as *const u64) };
                        word == !std::hint::black_box(RESIDUE_MASK)
                    })
                    .count();
                Outcome::delivered(found.to_string())
            }
            #[cfg(not(target_arch = "wasm32"))]
            Outcome::rejected("residue", "only in WebAssembly")
        }
        other => Outcome::rejected("residue", format!("unknown mode `{other}`")),
    }
}
