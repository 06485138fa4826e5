//! The Redis dedup backend against a real Redis (`make services` starts one on loopback and sets
//! SWITCHBOARD_TEST_REDIS).

// Test code: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use switchboard::dedup::{DedupStore, RedisDedup, fingerprint};

fn redis_url() -> String {
    std::env::var("SWITCHBOARD_TEST_REDIS").expect(
        "SWITCHBOARD_TEST_REDIS is not set: run the tests with `make test`, which starts Redis",
    )
}

#[tokio::test]
async fn marks_are_seen_and_stored_as_compact_intsets() {
    let prefix = format!(
        "sbtest:{}:{}",
        std::process::id(),
        fingerprint("run") % 100_000
    );
    let store = RedisDedup::connect(&redis_url(), &prefix, Duration::from_secs(3600), 4)
        .await
        .expect("connect to the test Redis");
    let dedup = DedupStore::Redis(store);
    let keys: Vec<String> = (0..200).map(|i| format!("req-{i}/0")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    assert!(dedup.seen(&refs).await.unwrap().iter().all(|seen| !seen));
    dedup.mark(&refs[..150]).await.unwrap();
    let seen = dedup.seen(&refs).await.unwrap();
    assert!(seen[..150].iter().all(|s| *s));
    assert!(seen[150..].iter().all(|s| !s));

    // Four shards of one bucket hold the 150 marks, each as an intset with a TTL.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(found.len(), 4, "{found:?}");
    for key in &found {
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(encoding, "intset", "{key}");
        let ttl: i64 = redis::cmd("TTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 3600, "{key} expires with its bucket, ttl {ttl}");
    }
    let _: () = redis::cmd("DEL")
        .arg(&found)
        .query_async(&mut conn)
        .await
        .unwrap();
}
