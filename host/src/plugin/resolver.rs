//! The name resolver of the plugins' HTTP client: which addresses a granted name may lead to.
//!
//! The allow-list is checked on the name in the URL, but the connection goes to whatever the
//! name resolves to when it is made. A name whose DNS answer the plugin's author controls (or
//! that an attacker can change) could point at the host's loopback, the operator's private
//! network or a cloud metadata service after the grant was checked. So every name resolves to
//! its public addresses only. Two kinds of grant name a non-public address on purpose: an IP
//! address in the URL (no lookup happens at all) and `localhost` (loopback only, RFC 6761), and
//! `http.private_names` lists the operator's own names that may resolve anywhere.
//!
//! Hand-written because no resolver crate filters by address class; the lookup itself is the
//! system's (`getaddrinfo` through tokio), as it was before.
//!
//! Must never: return a loopback, private, link-local, shared, multicast or reserved address
//! for a name that was not listed as private.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A name resolved only to addresses a plugin may not reach. Found in the transport error's
/// chain and turned into a denial (`outbound.rs`).
#[derive(Debug, thiserror::Error)]
#[error(
    "`{name}` resolves to {address}, which is not a public address: grant the address itself, or list the name in http.private_names"
)]
pub struct RefusedAddress {
    name: String,
    address: IpAddr,
}

/// Resolves names for the plugins' HTTP client, keeping public addresses only.
#[derive(Debug, Default)]
pub struct PublicOnlyResolver {
    /// Names that may resolve to any address (`http.private_names`), lowercase.
    private_names: HashSet<String>,
}

impl PublicOnlyResolver {
    /// A resolver that lets `private_names` resolve to any address.
    pub fn new(private_names: &[String]) -> Arc<Self> {
        Arc::new(Self {
            private_names: private_names
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        })
    }

    fn policy(&self, name: &str) -> Reach {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if self.private_names.contains(&name) {
            Reach::Any
        } else if name == "localhost" || name.ends_with(".localhost") {
            Reach::Loopback
        } else {
            Reach::Public
        }
    }
}

/// What a name may resolve to.
#[derive(Debug, Clone, Copy)]
enum Reach {
    Any,
    Loopback,
    Public,
}

impl Reach {
    fn permits(self, ip: IpAddr) -> bool {
        match self {
            Reach::Any => true,
            Reach::Loopback => ip.to_canonical().is_loopback(),
            Reach::Public => is_public(ip),
        }
    }
}

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let reach = self.policy(name.as_str());
        let host = name.as_str().to_string();
        Box::pin(async move {
            // The port is the URL's: the connector sets it on every address.
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let (kept, refused): (Vec<SocketAddr>, Vec<SocketAddr>) =
                found.into_iter().partition(|a| reach.permits(a.ip()));
            match (kept.is_empty(), refused.first()) {
                (true, Some(first)) => Err(Box::new(RefusedAddress {
                    name: host,
                    address: first.ip(),
                })
                    as Box<dyn std::error::Error + Send + Sync>),
                _ => Ok(Box::new(kept.into_iter()) as Addrs),
            }
        })
    }
}

/// True for an address on the public internet: not loopback, private (RFC 1918, unique local),
/// link-local (where cloud metadata services live), shared (RFC 6598), unspecified, broadcast,
/// multicast, documentation, benchmarking or reserved. An IPv6 address that carries an IPv4
/// one (mapped, NAT64, 6to4) is judged by the IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        // Shared address space (carrier NAT; some clouds' metadata services live here).
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking.
        || (a == 198 && (b == 18 || b == 19))
        // Reserved, 240/4.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let segments = ip.segments();
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) carry an IPv4 address.
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    if segments[0] == 0x2002 {
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (segments[0] & 0xfe00) == 0xfc00
        // Link-local, fe80::/10, and the old site-local, fec0::/10.
        || (segments[0] & 0xffc0) == 0xfe80
        || (segments[0] & 0xffc0) == 0xfec0
        // Documentation, 2001:db8::/32.
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        // IPv4-compatible (deprecated) ::a.b.c.d.
        || segments[..6] == [0, 0, 0, 0, 0, 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.100.100.200",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(!is_public(ip(private)), "{private}");
        }
        for public in ["8.8.8.8", "142.250.196.106", "2607:f8b0:4004:c1b::5f"] {
            assert!(is_public(ip(public)), "{public}");
        }
    }

    #[test]
    fn localhost_reaches_loopback_only_and_listed_names_reach_anything() {
        let resolver = PublicOnlyResolver::new(&["Gateway.Corp.Internal".to_string()]);
        assert!(matches!(resolver.policy("localhost"), Reach::Loopback));
        assert!(matches!(resolver.policy("api.localhost."), Reach::Loopback));
        assert!(matches!(
            resolver.policy("gateway.corp.internal"),
            Reach::Any
        ));
        assert!(matches!(resolver.policy("evil.example"), Reach::Public));
        assert!(!Reach::Loopback.permits(ip("10.0.0.1")));
        assert!(Reach::Loopback.permits(ip("::1")));
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused() {
        // `localhost.` through a resolver that treats no name as loopback: the public-only rule.
        let resolver = PublicOnlyResolver::default();
        let refused = Reach::Public;
        assert!(!refused.permits(ip("127.0.0.1")));
        let name: Name = match "localhost".parse() {
            Ok(name) => name,
            Err(_) => return,
        };
        // `localhost` itself is allowed loopback, so its addresses come back.
        let found = resolver.resolve(name).await.map(|a| a.count()).unwrap_or(0);
        assert!(found > 0);
    }
}
