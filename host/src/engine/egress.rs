//! Outbound HTTP policy for plugins: the allow-list, refusal of loopback,
//! private, link-local and cloud-metadata addresses (after DNS resolution and
//! on every redirect), and a DNS resolver that never yields such addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::AllowedHost;

/// The address class a plugin may not reach unless its manifest lists that
/// exact address, or `None` for a public address.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4);
            }
            let seg0 = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("cloud metadata")
            } else if seg0 & 0xfe00 == 0xfc00 {
                Some("private (unique local)")
            } else if seg0 & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("cloud metadata")
    } else if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if o[0] == 100 && (64..128).contains(&o[1]) {
        Some("shared (carrier-grade NAT)")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() || ip.is_multicast() {
        Some("broadcast or multicast")
    } else {
        None
    }
}

/// The longest URL a plugin may hand the host to pass on (MMS media).
pub const MAX_PASSED_URL: usize = 2048;

/// Checks a URL the host passes on for someone else to fetch (JustCall
/// fetches MMS media): at most [`MAX_PASSED_URL`] bytes, https, with a host
/// name or a public address (no loopback, private or metadata literal, no
/// `localhost`). Says what is wrong.
pub fn public_https(url: &str) -> Result<(), String> {
    if url.len() > MAX_PASSED_URL {
        return Err(format!("URL is over {MAX_PASSED_URL} bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("bad URL: {e}"))?;
    if parsed.scheme() != "https" {
        return Err(format!("scheme `{}` is not https", parsed.scheme()));
    }
    match parsed.host() {
        None => Err("URL has no host".into()),
        Some(url::Host::Ipv4(ip)) => forbidden_v4(ip).map_or(Ok(()), |class| Err(format!("{ip} is a {class} address"))),
        Some(url::Host::Ipv6(ip)) => forbidden_class(IpAddr::V6(ip)).map_or(Ok(()), |class| Err(format!("{ip} is a {class} address"))),
        Some(url::Host::Domain(d)) if d == "localhost" || d.ends_with(".localhost") => Err(format!("{d} is loopback")),
        Some(url::Host::Domain(_)) => Ok(()),
    }
}

/// Why a plugin's request may not go out; the message is for the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The origin is not in the manifest's `allowed_hosts`.
    #[error("{0} is not in allowed_hosts")]
    NotAllowed(String),
    /// The name resolves to a loopback, private, link-local or other
    /// non-public address.
    #[error("{domain} resolves to {ip}, a {class} address")]
    NonPublic {
        /// The host name.
        domain: String,
        /// The address it resolved to.
        ip: std::net::IpAddr,
        /// What kind of address that is.
        class: &'static str,
    },
    /// DNS failed, or gave no address.
    #[error("cannot resolve {0}")]
    Unresolved(String),
    /// The URL has no host.
    #[error("{0} has no host")]
    NoHost(String),
}

/// Whether `url`'s origin is in `allowed`: the part of [`check`] that needs
/// no DNS (all `plugin test` applies, as it sends nothing).
pub fn listed(url: &reqwest::Url, allowed: &[AllowedHost]) -> Result<(), Refusal> {
    if allowed.iter().any(|h| h.matches(url)) {
        return Ok(());
    }
    Err(Refusal::NotAllowed(format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port_or_known_default().unwrap_or(0)
    )))
}

/// Whether a plugin may send a request to `url`: its origin must be in
/// `allowed`, and a host name must resolve only to public addresses. An IP
/// address in the URL passes only by being listed exactly (wildcards name
/// domains, never addresses).
pub async fn check(url: &reqwest::Url, allowed: &[AllowedHost]) -> Result<(), Refusal> {
    listed(url, allowed)?;
    match url.host() {
        Some(url::Host::Ipv4(_)) | Some(url::Host::Ipv6(_)) => Ok(()),
        Some(url::Host::Domain(domain)) => {
            let port = url.port_or_known_default().unwrap_or(0);
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((domain, port))
                .await
                .map_err(|e| Refusal::Unresolved(format!("{domain}: {e}")))?
                .collect();
            for a in &addrs {
                if let Some(class) = forbidden_class(a.ip()) {
                    return Err(Refusal::NonPublic {
                        domain: domain.to_string(),
                        ip: a.ip(),
                        class,
                    });
                }
            }
            if addrs.is_empty() {
                return Err(Refusal::Unresolved(format!("{domain}: no addresses")));
            }
            Ok(())
        }
        None => Err(Refusal::NoHost(url.to_string())),
    }
}

/// The DNS resolver of the plugins' HTTP client: it drops every forbidden
/// address, so a name that changes its answer after [`check`] (DNS rebinding)
/// still cannot reach a private address.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| forbidden_class(a.ip()).is_none())
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        let class = |s: &str| forbidden_class(s.parse().unwrap());
        assert_eq!(class("127.0.0.1"), Some("loopback"));
        assert_eq!(class("10.1.2.3"), Some("private"));
        assert_eq!(class("172.20.0.1"), Some("private"));
        assert_eq!(class("192.168.1.1"), Some("private"));
        assert_eq!(class("169.254.169.254"), Some("cloud metadata"));
        assert_eq!(class("169.254.1.1"), Some("link-local"));
        assert_eq!(class("100.64.0.1"), Some("shared (carrier-grade NAT)"));
        assert_eq!(class("0.0.0.0"), Some("unspecified"));
        assert_eq!(class("::1"), Some("loopback"));
        assert_eq!(class("::ffff:127.0.0.1"), Some("loopback"));
        assert_eq!(class("fd00:ec2::254"), Some("cloud metadata"));
        assert_eq!(class("fd12::1"), Some("private (unique local)"));
        assert_eq!(class("fe80::1"), Some("link-local"));
        assert_eq!(class("93.184.216.34"), None);
        assert_eq!(class("2606:4700::1111"), None);
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused() {
        let allowed = vec![
            AllowedHost::parse("http://localhost:9000").unwrap(),
            AllowedHost::parse("http://127.0.0.1:9000").unwrap(),
        ];
        let err = check(&reqwest::Url::parse("http://localhost:9000/x").unwrap(), &allowed)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Refusal::NonPublic { domain, class: "loopback", .. } if domain == "localhost"),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("localhost resolves to "), "{err}");
        assert!(err.to_string().ends_with("a loopback address"), "{err}");
        // Listed exactly: allowed.
        assert_eq!(
            check(&reqwest::Url::parse("http://127.0.0.1:9000/x").unwrap(), &allowed).await,
            Ok(())
        );
        assert_eq!(
            check(&reqwest::Url::parse("http://169.254.169.254/latest").unwrap(), &allowed).await,
            Err(Refusal::NotAllowed("http://169.254.169.254:80".into()))
        );
    }
}
