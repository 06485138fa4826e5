//! A component of the wrong world: it has the adapter's `describe` and `init` but no `deliver`,
//! as an adapter built against an old or mistyped WIT would. The host must refuse it at load.

wit_bindgen::generate!({
    inline: r#"
        package switchboard:adapter@0.1.0;

        interface types {
          record plugin-info {
            name: string,
            version: string,
            channel: string,
            max-batch: u32,
            wants-hosts: list<string>,
          }
        }

        world adapter {
          use types.{plugin-info};
          export describe: func() -> plugin-info;
          export init: func(config: list<tuple<string, string>>) -> result<_, string>;
        }
    "#,
    world: "adapter",
});

struct MissingDeliver;

impl Guest for MissingDeliver {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "missing_deliver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            channel: "test".into(),
            max_batch: 1,
            wants_hosts: Vec::new(),
        }
    }

    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }
}

export!(MissingDeliver);
