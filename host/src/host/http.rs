//! The outbound HTTP client plugins' requests go through.

use std::time::Duration;

use anyhow::Context as _;

use crate::config::Config;

/// The HTTP client every plugin's requests go through: pooled, and HTTP/2 wherever TLS ALPN
/// offers it (APNs accepts nothing else). `extra_root_pems` are CA certificates to trust besides
/// the built-in web roots.
pub fn http_client(extra_root_pems: &[String]) -> anyhow::Result<reqwest::Client> {
    http_client_with(extra_root_pems, &[])
}

/// As [`http_client`], letting `private_names` resolve to non-public addresses
/// (`http.private_names`). Every other name reaches public addresses only, and redirects are
/// never followed by the client: the plugin's request path follows them, checking each hop
/// against the plugin's grants (`plugin/outbound.rs`).
pub fn http_client_with(
    extra_root_pems: &[String],
    private_names: &[String],
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        // As many as a plugin may have in flight (`bounds.requests_in_flight`, 512 by default)
        // and then some: a call's requests end together, and a pool that keeps fewer closes the
        // rest only for the next call to open them again. At 256, with 384 requests in flight,
        // one request in a hundred opened a connection (`switchboard-lab throughput`).
        .pool_max_idle_per_host(1024)
        .pool_idle_timeout(Duration::from_secs(90))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(crate::plugin::resolver::PublicOnlyResolver::new(
            private_names,
        ));
    for pem in extra_root_pems {
        let cert = reqwest::Certificate::from_pem(pem.as_bytes())
            .context("an extra root certificate is not valid PEM")?;
        builder = builder.add_root_certificate(cert);
    }
    builder.build().context("building the HTTP client")
}

/// Reads the configured extra root certificates.
pub fn extra_root_pems(config: &Config) -> anyhow::Result<Vec<String>> {
    config
        .http
        .extra_root_certs
        .iter()
        .map(|path| {
            let path = config.resolve(path);
            std::fs::read_to_string(&path)
                .with_context(|| format!("http.extra_root_certs: cannot read {}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;
    use tokio::sync::Barrier;

    /// A keep-alive HTTP/1.1 server that counts the connections it accepts and answers no
    /// request until `wave` requests are waiting, so a wave of that many needs that many
    /// connections at once.
    async fn counting_server(wave: usize) -> std::io::Result<(String, Arc<AtomicUsize>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/", listener.local_addr()?);
        let accepted = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(Barrier::new(wave));
        let counted = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let barrier = barrier.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                        // A GET without a body: one head per request.
                        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                            head.drain(..end + 4);
                            barrier.wait().await;
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if socket.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Ok((url, accepted))
    }

    async fn send_wave(client: &reqwest::Client, url: &str, wave: usize) -> reqwest::Result<()> {
        let requests = (0..wave).map(|_| async {
            let body = client.get(url).send().await?.bytes().await?;
            assert_eq!(body.as_ref(), b"ok");
            reqwest::Result::Ok(())
        });
        futures::future::join_all(requests)
            .await
            .into_iter()
            .collect()
    }

    /// A call's requests end together. A pool that kept fewer idle connections than a call had
    /// in flight closed the rest, and the next call opened them again: at 256 idle and 300 in
    /// flight, 44 connections per wave.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_wave_of_requests_reuses_the_first_waves_connections() -> anyhow::Result<()> {
        const WAVE: usize = 300;
        let (url, accepted) = counting_server(WAVE).await?;
        let client = super::http_client(&[])?;
        send_wave(&client, &url, WAVE).await?;
        assert_eq!(accepted.load(Ordering::SeqCst), WAVE);
        // A connection goes back to the pool once its task sees the response end, which may
        // come just after the body was read.
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        send_wave(&client, &url, WAVE).await?;
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            WAVE,
            "the second wave opened connections the pool had closed"
        );
        Ok(())
    }
}
