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
