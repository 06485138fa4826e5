//! One HTTP request of a plugin, out and back. On the way out: the allow-list, the call's
//! request limit and transfer budget, a slot among the plugin's requests in flight, and the
//! secret placeholders filled in. Redirects are followed here, never by the HTTP client, so every
//! hop passes the allow-list again and a hop from https to plain http is refused unless the
//! grant names plain http. On the way back: the response bounded in size, and every secret value
//! the request carried scrubbed out of it before the guest sees it.
//!
//! Which addresses a granted name may resolve to is `resolver.rs`'s job; this module turns its
//! refusal into a denial the plugin can read.
//!
//! Must never: send a request, or a filled value, to a host the plugin was not granted; hand
//! the guest a secret value it caused to be filled in; let a call transfer more than its budget.

use std::sync::atomic::Ordering;
use std::time::Instant;

use futures::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use super::capabilities::{CallCapabilities, Capabilities, ExchangeCounts};
use super::resolver::RefusedAddress;
use crate::contract::bindings::http::{self, HttpError};
use crate::secrets::{PluginSecrets, fill_owned_placeholders_noting, fill_placeholders};

/// Largest vendor response body a plugin may receive; a larger one is a protocol error rather
/// than a way to exhaust host memory.
pub(super) const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;

/// Redirects one request may follow: what browsers and reqwest's own policy allow.
const MAX_REDIRECTS: usize = 10;

/// The shortest secret value scrubbed out of answers. A shorter one would match ordinary text
/// of the answer and garble it; real API keys, tokens and passwords are longer.
pub(super) const MIN_SCRUBBED_SECRET_BYTES: usize = 8;

/// A call's `http` imports: each request goes out through [`send_one`], within what is left of
/// the call's deadline. Here rather than beside the other capabilities, so the grants
/// (`capabilities.rs`) know nothing of how a request is carried out.
impl CallCapabilities {
    pub(crate) async fn send(
        &self,
        request: http::Request,
    ) -> Result<http::Response, http::HttpError> {
        send_one(&self.caps, self.deadline, &self.exchanges, request).await
    }

    /// Sends `requests` at most `bounds.requests_in_flight_per_call` at a time, and answers in
    /// their order.
    pub(crate) async fn send_all(
        &self,
        requests: Vec<http::Request>,
    ) -> Vec<Result<http::Response, http::HttpError>> {
        let at_once = self.caps.bounds().requests_in_flight_per_call.max(1) as usize;
        futures::stream::iter(requests)
            .map(|r| send_one(&self.caps, self.deadline, &self.exchanges, r))
            .buffered(at_once)
            .collect()
            .await
    }
}

/// Sends one request of a call, counting in `exchanges` whether it reached the vendor. A
/// request refused here (bad URL, host not granted, secret not owned, a limit reached) is not
/// counted as an exchange at all: nothing left the host.
pub(super) async fn send_one(
    caps: &Capabilities,
    deadline: Instant,
    exchanges: &ExchangeCounts,
    request: http::Request,
) -> Result<http::Response, HttpError> {
    let url = reqwest::Url::parse(&request.url)
        .map_err(|e| HttpError::Protocol(format!("bad url: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(HttpError::Denied(format!(
            "scheme `{}` is not allowed",
            url.scheme()
        )));
    }
    let bounds = caps.bounds();
    if !exchanges.take_request(bounds.requests_per_call) {
        caps.counters
            .denied_requests
            .fetch_add(1, Ordering::Relaxed);
        return Err(HttpError::Denied(format!(
            "this call reached its limit of {} requests (bounds.requests_per_call)",
            bounds.requests_per_call
        )));
    }
    if let Some(script) = caps.script() {
        // Offline: placeholders must still name the plugin's own secrets.
        for (_, value) in &request.headers {
            if let Err(missing) = fill_placeholders(value, &caps.secrets) {
                return Err(HttpError::Denied(format!(
                    "secret `{missing}` is not granted to this plugin"
                )));
            }
        }
        exchanges.start();
        let result = script.answer(&request);
        exchanges.end(&result, false);
        return result;
    }
    if !caps.permits(&url) {
        return Err(deny_host(
            caps,
            &url,
            "plugin tried a host it was not granted",
        ));
    }
    let recorded = caps.recorder().map(|_| request.clone());
    let method = reqwest::Method::from_bytes(request.method.as_bytes())
        .map_err(|_| HttpError::Protocol(format!("bad method `{}`", request.method)))?;
    let mut builder = caps.client.request(method, url);
    let mut filled = Vec::new();
    // The request is ours: a value without a placeholder goes to the client as it is.
    for (name, value) in request.headers {
        let value = fill_owned_placeholders_noting(value, &caps.secrets, &mut filled).map_err(
            |missing| {
                caps.counters.denied_secrets.fetch_add(1, Ordering::Relaxed);
                HttpError::Denied(format!("secret `{missing}` is not granted to this plugin"))
            },
        )?;
        builder = builder.header(name, value);
    }
    let body_bytes = request.body.len() as u64;
    // Built here, so a malformed header is refused before anything is sent.
    let outgoing = builder
        .body(request.body)
        .build()
        .map_err(|e| HttpError::Protocol(error_chain(&e)))?;
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return Err(HttpError::Timeout);
    }
    if !exchanges.take_transfer(body_bytes, bounds.transfer_bytes_per_call) {
        return Err(over_transfer_budget(caps));
    }
    // The plugin's requests in flight are bounded over all its calls; a request waits for a
    // slot within its call's deadline, and one that never gets one was never sent. Bulk
    // requests take a bulk slot first, so realtime always finds one of the rest.
    let quotas = caps.quotas();
    let mut redirects_answered = 0usize;
    let mut started = false;
    // One timer for the whole request: the wait for a slot, then the exchange, redirects and
    // body included, so a vendor that trickles bytes cannot hold the call past its deadline.
    // When it passes while the connection is still being made, reqwest cannot tell us so, and
    // the request counts as one the vendor may have acted on: a retry pinned for nothing is
    // slower, one failed over wrongly may be sent twice. The client's own connect timeout
    // (shorter than a call's) is what tells a dead vendor apart.
    let request_within_deadline = async {
        let bulk = match caps.is_realtime() {
            true => None,
            false => match quotas.bulk_in_flight.acquire().await {
                Ok(permit) => Some(permit),
                Err(_) => return Err(HttpError::Timeout),
            },
        };
        let Ok(_slot) = quotas.in_flight.acquire().await else {
            return Err(HttpError::Timeout);
        };
        let _bulk = bulk;
        started = true;
        exchanges.start();
        follow(
            caps,
            exchanges,
            outgoing,
            &mut redirects_answered,
            bounds.transfer_bytes_per_call,
        )
        .await
    };
    let result = tokio::time::timeout(remaining, request_within_deadline).await;
    // A request that never got a slot was never sent, and counts as no exchange.
    let mut result = match (result, started) {
        (Ok(result), true) => result,
        (Err(_), true) => Err(HttpError::Timeout),
        (Ok(not_sent), false) => return not_sent,
        (Err(_), false) => return Err(HttpError::Timeout),
    };
    // A hop refused after the vendor answered with a redirect: that vendor did answer.
    exchanges.end(&result, redirects_answered > 0);
    if let Ok(response) = &mut result {
        let scrubbed = scrub_secrets(response, &caps.secrets, &filled);
        if scrubbed > 0 {
            caps.counters
                .scrubbed_secrets
                .fetch_add(scrubbed, Ordering::Relaxed);
            tracing::warn!(
                plugin = %caps.plugin,
                occurrences = scrubbed,
                "a granted host sent back a secret value the request carried; scrubbed before the plugin saw it"
            );
        }
    }
    if let (Some(recorder), Some(request), Ok(response)) = (caps.recorder(), &recorded, &result) {
        recorder.record(request, response);
    }
    result
}

/// Sends `outgoing`, following redirects within the plugin's grants, and reads the final
/// answer. `redirects_answered` counts the hops that answered with a redirect.
async fn follow(
    caps: &Capabilities,
    exchanges: &ExchangeCounts,
    mut outgoing: reqwest::Request,
    redirects_answered: &mut usize,
    transfer_budget: u64,
) -> Result<http::Response, HttpError> {
    let mut response = loop {
        // A body held in memory clones cheaply (reference-counted bytes); it is needed again
        // only for a 307 or 308.
        let again = outgoing.try_clone();
        let response = caps
            .client
            .execute(outgoing)
            .await
            .map_err(|e| transport_error(caps, e))?;
        let status = response.status();
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|l| l.to_str().ok());
        let redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
        let (true, Some(location)) = (redirect, location) else {
            break response;
        };
        // The client follows no redirects, so the answer's URL is the request's.
        let from = response.url();
        *redirects_answered += 1;
        if *redirects_answered > MAX_REDIRECTS {
            return Err(HttpError::Protocol(format!(
                "more than {MAX_REDIRECTS} redirects"
            )));
        }
        let to = from
            .join(location)
            .map_err(|e| HttpError::Protocol(format!("bad redirect location: {e}")))?;
        check_hop(caps, from, &to)?;
        let Some(mut next) = again else {
            return Err(HttpError::Protocol(
                "a redirect asked to send a streamed body again".into(),
            ));
        };
        *next.url_mut() = to;
        // As browsers and reqwest do: 303 turns into GET, and so does a POST met by 301 or
        // 302; 307 and 308 send the same method and body again.
        let becomes_get = status == StatusCode::SEE_OTHER && next.method() != reqwest::Method::HEAD
            || matches!(status, StatusCode::MOVED_PERMANENTLY | StatusCode::FOUND)
                && next.method() == reqwest::Method::POST;
        if becomes_get {
            *next.method_mut() = reqwest::Method::GET;
            *next.body_mut() = None;
            next.headers_mut().remove(CONTENT_TYPE);
            next.headers_mut().remove(CONTENT_LENGTH);
        } else if let Some(body) = next.body().and_then(|b| b.as_bytes()) {
            let resent = body.len() as u64;
            if !exchanges.take_transfer(resent, transfer_budget) {
                return Err(over_transfer_budget(caps));
            }
        }
        outgoing = next;
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(caps, e))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(HttpError::Protocol(format!(
                "response body over {MAX_RESPONSE_BYTES} bytes"
            )));
        }
        if !exchanges.take_transfer(chunk.len() as u64, transfer_budget) {
            return Err(over_transfer_budget(caps));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(http::Response {
        status,
        headers,
        body,
    })
}

/// Whether a redirect from `from` to `to` may be followed: the new host must be granted, and a
/// step down from https to plain http needs a grant written `http://host[:port]`.
fn check_hop(caps: &Capabilities, from: &reqwest::Url, to: &reqwest::Url) -> Result<(), HttpError> {
    if !matches!(to.scheme(), "http" | "https") {
        return Err(HttpError::Denied(format!(
            "redirect to scheme `{}` is not allowed",
            to.scheme()
        )));
    }
    if !caps.permits(to) {
        return Err(deny_host(
            caps,
            to,
            "a granted host redirected the plugin to a host it was not granted",
        ));
    }
    if from.scheme() == "https" && to.scheme() == "http" && !caps.permits_plain_http(to) {
        caps.counters
            .denied_downgrades
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %caps.plugin, host = to.host_str().unwrap_or(""), "refused a redirect from https to plain http");
        return Err(HttpError::Denied(format!(
            "redirect from https to plain http `{}` refused: grant `http://{}` to allow it",
            to.host_str().unwrap_or(""),
            to.host_str().unwrap_or("")
        )));
    }
    Ok(())
}

fn deny_host(caps: &Capabilities, url: &reqwest::Url, why: &'static str) -> HttpError {
    let host = url.host_str().unwrap_or("");
    caps.counters.denied_hosts.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(plugin = %caps.plugin, host, "{why}");
    HttpError::Denied(format!("host `{host}` is not granted to this plugin"))
}

fn over_transfer_budget(caps: &Capabilities) -> HttpError {
    caps.counters.over_transfer.fetch_add(1, Ordering::Relaxed);
    HttpError::Protocol(format!(
        "this call spent its transfer budget of {} bytes (bounds.transfer_bytes_per_call)",
        caps.bounds().transfer_bytes_per_call
    ))
}

/// Replaces every secret value the request carried with its placeholder, in the answer's body
/// and headers. Returns how many occurrences it replaced. Only the plain value is found: an
/// answer that encodes it (base64, reversed) still carries it (SECURITY.md).
pub(super) fn scrub_secrets(
    response: &mut http::Response,
    secrets: &PluginSecrets,
    filled: &[String],
) -> u64 {
    let mut scrubbed = 0u64;
    for name in filled {
        let Some(value) = secrets.get(name) else {
            continue;
        };
        let value = value.expose();
        if value.len() < MIN_SCRUBBED_SECRET_BYTES {
            continue;
        }
        let placeholder = format!("{{{{secret:{name}}}}}");
        let finder = memchr::memmem::Finder::new(value.as_bytes());
        if finder.find(&response.body).is_some() {
            let mut clean = Vec::with_capacity(response.body.len());
            let mut from = 0;
            for at in finder.find_iter(&response.body) {
                clean.extend_from_slice(&response.body[from..at]);
                clean.extend_from_slice(placeholder.as_bytes());
                from = at + value.len();
                scrubbed += 1;
            }
            clean.extend_from_slice(&response.body[from..]);
            response.body = clean;
        }
        for (_, header) in &mut response.headers {
            let found = header.matches(value).count() as u64;
            if found > 0 {
                *header = header.replace(value, &placeholder);
                scrubbed += found;
            }
        }
    }
    scrubbed
}

fn transport_error(caps: &Capabilities, e: reqwest::Error) -> HttpError {
    // A name that resolved only to addresses the plugin may not reach: nothing was sent.
    if let Some(refused) = find_source::<RefusedAddress>(&e) {
        caps.counters
            .denied_addresses
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(plugin = %caps.plugin, "{refused}");
        return HttpError::Denied(refused.to_string());
    }
    // reqwest errors carry the URL, never headers, so no secret can leak through them.
    // A connection that could not be made is `Connect` even when it timed out (reqwest says
    // both): nothing was sent, which is what decides where a retry may go.
    if e.is_connect() {
        HttpError::Connect(error_chain(&e))
    } else if e.is_timeout() {
        HttpError::Timeout
    } else {
        HttpError::Protocol(error_chain(&e))
    }
}

fn find_source<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut current = Some(e);
    while let Some(error) = current {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        current = error.source();
    }
    None
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(body: &str, header: &str) -> http::Response {
        http::Response {
            status: 200,
            headers: vec![("x-echo".into(), header.into())],
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn filled_values_are_scrubbed_from_body_and_headers() {
        let secrets = PluginSecrets::from_values([
            ("key".to_string(), "s3cr3t-value".to_string()),
            ("pin".to_string(), "1234".to_string()),
        ]);
        let mut answer = response(
            "{\"echo\":\"s3cr3t-value\",\"again\":\"xs3cr3t-valuex\",\"pin\":\"1234\"}",
            "Bearer s3cr3t-value",
        );
        let filled = ["key".to_string(), "pin".to_string()];
        assert_eq!(scrub_secrets(&mut answer, &secrets, &filled), 3);
        let body = String::from_utf8(answer.body).unwrap_or_default();
        assert_eq!(
            body, "{\"echo\":\"{{secret:key}}\",\"again\":\"x{{secret:key}}x\",\"pin\":\"1234\"}",
            "a value shorter than {MIN_SCRUBBED_SECRET_BYTES} bytes is left alone"
        );
        assert_eq!(answer.headers[0].1, "Bearer {{secret:key}}");
        // A secret the request did not carry is not looked for.
        let mut other = response("s3cr3t-value", "");
        assert_eq!(scrub_secrets(&mut other, &secrets, &[]), 0);
    }
}
