//! An adapter that fits the world in every export but also imports `raw-socket`, an interface
//! the host does not provide, as a plugin reaching for a capability it was never offered would.
//! The host must refuse it at load, naming the import.

wit_bindgen::generate!({
    inline: r#"
        package switchboard:adapter@0.1.0;

        interface types {
          enum priority { realtime, batch, ads }
          record delivery {
            key: string,
            recipient: string,
            content: string,
            priority: priority,
            attempt: u32,
          }
          record retry-info { reason: string, after-ms: option<u64> }
          record rejection { code: string, reason: string }
          variant outcome {
            delivered(string),
            retry(retry-info),
            rejected(rejection),
            invalid-recipient(string),
          }
          record plugin-info {
            name: string,
            version: string,
            channel: string,
            max-batch: u32,
            wants-hosts: list<string>,
          }
        }

        /// Not part of the host's world.
        interface raw-socket {
          connect: func(address: string) -> result<u32, string>;
        }

        world adapter {
          import raw-socket;
          use types.{delivery, outcome, plugin-info};
          export describe: func() -> plugin-info;
          export init: func(config: list<tuple<string, string>>) -> result<_, string>;
          export deliver: func(batch: list<delivery>) -> list<outcome>;
        }
    "#,
    world: "adapter",
});

use switchboard::adapter::raw_socket;

struct ExtraImport;

impl Guest for ExtraImport {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "extra_import".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            channel: "test".into(),
            max_batch: 1,
            wants_hosts: Vec::new(),
        }
    }

    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn deliver(batch: Vec<Delivery>) -> Vec<Outcome> {
        // Calling the import keeps it in the component; an unused one would be dropped.
        batch
            .iter()
            .map(|d| match raw_socket::connect(&d.recipient) {
                Ok(fd) => Outcome::Delivered(fd.to_string()),
                Err(error) => Outcome::InvalidRecipient(error),
            })
            .collect()
    }
}

export!(ExtraImport);
