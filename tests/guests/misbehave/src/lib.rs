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
//!   time and returns the signature header (`delivered(signature)`).
//!
//! Config `init = "fail"` makes `init` refuse.

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
            _ => Ok(Misbehave),
        }
    }

    fn deliver(&self, batch: Vec<Delivery>) -> Vec<Outcome> {
        batch.iter().map(act).collect()
    }
}

fn act(delivery: &Delivery) -> Outcome {
    let (verb, arg) = delivery
        .recipient
        .split_once(':')
        .unwrap_or((delivery.recipient.as_str(), ""));
    match verb {
        "ok" => Outcome::delivered(format!("ok-{}", delivery.key)),
        "loop" => {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
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
        other => Outcome::rejected("unknown-verb", other.to_string()),
    }
}

switchboard_sdk::export_adapter!(Misbehave);
