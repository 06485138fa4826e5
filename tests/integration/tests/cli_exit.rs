//! The `switchboard` command's exit statuses, and `SWITCHBOARD_CONFIG` in place of `--config`,
//! as a script or a service manager sees them: 78 when the config is at fault, 1 when something
//! failed at run time, 2 for a command line clap refuses.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use switchboard::cli::EXIT_CONFIG;
use switchboard_integration_tests::switchboard_bin;

fn switchboard(args: &[&str], config_env: Option<&Path>) -> Output {
    let mut command = Command::new(switchboard_bin());
    command
        .args(args)
        .env_remove("SWITCHBOARD_CONFIG")
        .env_remove("RUST_LOG");
    if let Some(path) = config_env {
        command.env("SWITCHBOARD_CONFIG", path);
    }
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_config_at_fault_exits_78_and_names_the_field_and_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    std::fs::write(
        &config,
        "[kafka]\nbrokers = \"127.0.0.1:9\"\n\n[dedup]\nbackend = \"redis\"\n\
         redis_url = { env = \"SWITCHBOARD_TEST_NEVER_SET_REDIS_URL\" }\n",
    )
    .unwrap();
    // Through SWITCHBOARD_CONFIG, with no --config.
    let out = switchboard(&["run"], Some(&config));
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_CONFIG)),
        "{}",
        stderr(&out)
    );
    let text = stderr(&out);
    assert!(
        text.contains("line 6") && text.contains("dedup.redis_url"),
        "{text}"
    );

    let missing = switchboard(&["run", "--config", "/nonexistent/switchboard.toml"], None);
    assert_eq!(missing.status.code(), Some(i32::from(EXIT_CONFIG)));

    std::fs::write(&config, "[kafka]\ncommit_interval_ms = \"soon\"\n").unwrap();
    let unparsable = switchboard(&["run", "--config", config.to_str().unwrap()], None);
    assert_eq!(unparsable.status.code(), Some(i32::from(EXIT_CONFIG)));

    // Store settings that could only fail later, at a connection, are the config's too.
    for (table, field) in [
        (
            "[dedup]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\nredis_tls_ca_file = \"ca.pem\"\n",
            "dedup.redis_tls_ca_file",
        ),
        (
            "[dedup]\nbackend = \"redis\"\nredis_url = \"http://not-redis\"\n",
            "dedup.redis_url",
        ),
        (
            "[history]\nbackend = \"postgres\"\nurl = \"postgres://db/h\"\ntls_ca_file = \"ca.pem\"\n",
            "history.tls_ca_file",
        ),
        (
            "[history]\nbackend = \"postgres\"\nurl = \"postgres://db/h?sslmode=sometimes\"\n",
            "history.url",
        ),
    ] {
        std::fs::write(
            &config,
            format!("[kafka]\nbrokers = \"127.0.0.1:9\"\n\n{table}"),
        )
        .unwrap();
        let out = switchboard(&["run"], Some(&config));
        assert_eq!(
            out.status.code(),
            Some(i32::from(EXIT_CONFIG)),
            "{table}: {}",
            stderr(&out)
        );
        assert!(stderr(&out).contains(field), "{table}: {}", stderr(&out));
    }

    // No brokers, and no --embedded-test-cluster: the config is what is missing.
    std::fs::write(&config, "[history]\nbackend = \"off\"\n").unwrap();
    let no_brokers = switchboard(&["run"], Some(&config));
    assert_eq!(
        no_brokers.status.code(),
        Some(i32::from(EXIT_CONFIG)),
        "{}",
        stderr(&no_brokers)
    );
    assert!(stderr(&no_brokers).contains("kafka.brokers"));
}

#[test]
fn a_failure_at_run_time_exits_1_and_a_refused_command_line_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    // Nothing listens on port 1: the history store cannot be opened.
    std::fs::write(
        &config,
        "[history]\nbackend = \"postgres\"\n\
         url = \"postgres://sb:pw@127.0.0.1:1/sb?connect_timeout=2\"\n",
    )
    .unwrap();
    let out = switchboard(&["history"], Some(&config));
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(!stderr(&out).contains("sb:pw"), "{}", stderr(&out));

    let usage = switchboard(&["run"], None);
    assert_eq!(usage.status.code(), Some(2), "{}", stderr(&usage));
    assert!(stderr(&usage).contains("--config"), "{}", stderr(&usage));
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn config_check_prints_every_problem_with_its_line_and_connects_to_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("switchboard.toml");
    let fcm = switchboard_integration_tests::plugin_path("fcm");
    // Nothing listens on port 9: a check that connected would hang or fail there.
    let text = format!(
        "[kafka]\nbrokers = \"127.0.0.1:9\"\ntopics = [\"requests\"]\n\n\
         [budget]\ntotal_mb = 4\n\n\
         [plugins.fcm]\npath = \"missing/fcm.wasm\"\n\n\
         [plugins.sms]\npath = \"{}\"\n\n\
         [channels.sms]\nsms = 100\nghost = 1\n",
        fcm.display()
    );
    std::fs::write(&config, text).unwrap();
    let out = switchboard(&["config", "check"], Some(&config));
    assert_eq!(
        out.status.code(),
        Some(i32::from(EXIT_CONFIG)),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let printed = stdout(&out);
    for (line, field) in [
        (6, "budget.total_mb"),
        (9, "plugins.fcm.path"),
        (16, "channels.sms.ghost"),
        (15, "channels.sms.sms"),
    ] {
        assert!(
            printed
                .lines()
                .any(|l| l.starts_with("error:") && l.contains(&format!("line {line}: {field}"))),
            "no error for {field} at line {line}:\n{printed}"
        );
    }
    assert!(
        printed.contains("serves channel `push-android`"),
        "{printed}"
    );
    assert_eq!(
        printed.lines().filter(|l| l.starts_with("error:")).count(),
        4
    );

    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:9\"\ntopics = [\"requests\"]\n\n\
             [plugins.fcm]\npath = \"{}\"\n\n[channels.push-android]\nfcm = 100\n",
            fcm.display()
        ),
    )
    .unwrap();
    let ok = switchboard(&["config", "check", config.to_str().unwrap()], None);
    assert_eq!(ok.status.code(), Some(0), "{}{}", stdout(&ok), stderr(&ok));
    assert!(stdout(&ok).contains("ok:"), "{}", stdout(&ok));
}
