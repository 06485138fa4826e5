//! `switchboard plugin check` passes for every bundled plugin, and refuses what is not one.

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use switchboard_integration_tests::{guest_path, plugin_path};

const BUNDLED: [(&str, &str); 5] = [
    ("fcm", "push-android"),
    ("apns", "push-ios"),
    ("alimtalk-nhn", "alimtalk"),
    ("sms-twilio", "sms"),
    ("sms-nhn", "sms"),
];

/// The `switchboard` binary next to this test's own executable (`target/<profile>/`).
fn switchboard() -> Command {
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("switchboard"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: build the host first",
        bin.display()
    );
    Command::new(bin)
}

#[tokio::test]
async fn every_bundled_plugin_fits_the_world_and_describes_itself() {
    for (name, channel) in BUNDLED {
        let info = switchboard::plugin::check_component(&plugin_path(name))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(info.name, name);
        assert_eq!(info.channel, channel, "{name}");
        assert!(info.max_batch >= 1, "{name}");
        assert!(
            !info.wants_hosts.is_empty(),
            "{name} names the hosts it needs"
        );
    }
}

#[test]
fn the_cli_check_prints_the_description_and_refuses_a_non_component() {
    let ok = switchboard()
        .args(["plugin", "check"])
        .arg(plugin_path("fcm"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        stdout.contains("fits switchboard:adapter@0.1.0"),
        "{stdout}"
    );
    assert!(stdout.contains("channel:     push-android"), "{stdout}");

    let dir = std::env::temp_dir().join(format!("sb-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let junk = dir.join("junk.wasm");
    std::fs::write(&junk, b"not wasm").unwrap();
    let refused = switchboard()
        .args(["plugin", "check"])
        .arg(&junk)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );

    // The test guest fits the world too: the check is about the contract, not the vendor.
    let guest = switchboard()
        .args(["plugin", "check"])
        .arg(guest_path("misbehave"))
        .output()
        .unwrap();
    assert!(guest.status.success());
}
