//! Istio attribute keys (`when[].key`) and the value syntaxes shared by validation and compilation.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::error::Problem;

/// A `when` key, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attribute {
    /// `request.headers[<name>]`.
    RequestHeader(String),
    /// `source.ip`.
    SourceIp,
    /// `remote.ip`.
    RemoteIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `request.auth.principal`.
    RequestPrincipal,
    /// `request.auth.audiences`.
    RequestAudiences,
    /// `request.auth.presenter`.
    RequestPresenter,
    /// `request.auth.claims[a][b]...`.
    RequestClaims(Vec<String>),
    /// `destination.ip`.
    DestinationIp,
    /// `destination.port`.
    DestinationPort,
    /// `connection.sni`.
    ConnectionSni,
    /// `experimental.envoy.filters.*[...]`: accepted by Istio, not evaluable by Warden.
    Experimental,
}

impl Attribute {
    /// Whether Istio treats the attribute as HTTP only.
    pub(crate) fn http_only(&self) -> bool {
        matches!(
            self,
            Attribute::RequestHeader(_)
                | Attribute::RequestPrincipal
                | Attribute::RequestAudiences
                | Attribute::RequestPresenter
                | Attribute::RequestClaims(_)
                | Attribute::Experimental
        )
    }
}

const REQUEST_HEADERS: &str = "request.headers";
const REQUEST_CLAIMS: &str = "request.auth.claims";
const EXPERIMENTAL: &str = "experimental.envoy.filters.";

/// Parses a `when` key the way Istio validates it.
pub(crate) fn parse_key(key: &str) -> Result<Attribute, Problem> {
    Ok(match key {
        "source.ip" => Attribute::SourceIp,
        "remote.ip" => Attribute::RemoteIp,
        "source.namespace" => Attribute::SourceNamespace,
        "source.principal" => Attribute::SourcePrincipal,
        "request.auth.principal" => Attribute::RequestPrincipal,
        "request.auth.audiences" => Attribute::RequestAudiences,
        "request.auth.presenter" => Attribute::RequestPresenter,
        "destination.ip" => Attribute::DestinationIp,
        "destination.port" => Attribute::DestinationPort,
        "connection.sni" => Attribute::ConnectionSni,
        "destination.namespace" => {
            return Err(Problem::UnsupportedConditionKey(
                key.to_owned(),
                "replaced by metadata.namespace",
            ));
        }
        "destination.name" | "destination.user" => {
            return Err(Problem::UnsupportedConditionKey(
                key.to_owned(),
                "deprecated, only supported in v1alpha1",
            ));
        }
        _ if key.starts_with("destination.labels") => {
            return Err(Problem::UnsupportedConditionKey(
                key.to_owned(),
                "replaced by the workload selector",
            ));
        }
        _ if key.starts_with(REQUEST_HEADERS) => {
            let rest = &key[REQUEST_HEADERS.len()..];
            match brackets(rest) {
                Some(names) if names.len() == 1 => Attribute::RequestHeader(names[0].to_owned()),
                _ => {
                    return Err(Problem::MalformedConditionKey(
                        key.to_owned(),
                        REQUEST_HEADERS,
                    ));
                }
            }
        }
        _ if key.starts_with(REQUEST_CLAIMS) => {
            let rest = &key[REQUEST_CLAIMS.len()..];
            match brackets(rest) {
                Some(names) => {
                    Attribute::RequestClaims(names.into_iter().map(str::to_owned).collect())
                }
                None => {
                    return Err(Problem::MalformedConditionKey(
                        key.to_owned(),
                        REQUEST_CLAIMS,
                    ));
                }
            }
        }
        _ if key.starts_with(EXPERIMENTAL) => {
            let open = key.find('[');
            if key.ends_with(']') && open.is_some_and(|o| o > 0 && o < key.len() - 2) {
                Attribute::Experimental
            } else {
                return Err(Problem::MalformedConditionKey(
                    key.to_owned(),
                    "experimental.envoy.filters.<filter>",
                ));
            }
        }
        _ => return Err(Problem::UnknownConditionKey(key.to_owned())),
    })
}

/// Splits `[a][b][c]` into `a`, `b`, `c`; `None` unless the whole text is non-empty bracket groups.
fn brackets(s: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        out.push(name);
        rest = &inner[end + 1..];
    }
    if out.is_empty() { None } else { Some(out) }
}

/// Parses an IP block: a CIDR, or a bare address meaning /32 (IPv4) or /128 (IPv6).
pub(crate) fn parse_ip_block(v: &str) -> Result<IpNet, Problem> {
    let bad = || Problem::InvalidCidr(v.to_owned());
    if v.contains('/') {
        v.parse::<IpNet>().map_err(|_| bad())
    } else {
        v.parse::<IpAddr>().map(IpNet::from).map_err(|_| bad())
    }
}

/// Parses a port (`8080`), or a port range (`8000-8999`, a Warden extension), inclusive.
pub(crate) fn parse_port(v: &str) -> Result<(u16, u16), Problem> {
    fn number(s: &str) -> Option<u16> {
        if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse::<u32>().ok().and_then(|n| u16::try_from(n).ok())
    }
    if let Some((lo, hi)) = v.split_once('-') {
        match (number(lo), number(hi)) {
            (Some(lo), Some(hi)) if lo <= hi => Ok((lo, hi)),
            _ => Err(Problem::InvalidPortRange(v.to_owned())),
        }
    } else {
        number(v)
            .map(|p| (p, p))
            .ok_or_else(|| Problem::InvalidPort(v.to_owned()))
    }
}

/// Checks a path: a plain string matcher, or a template with `{*}` / `{**}` segments.
pub(crate) fn check_path(v: &str) -> Result<(), Problem> {
    crate::matcher::PathTemplate::parse(v)
        .map(|_| ())
        .ok_or_else(|| Problem::InvalidPathTemplate(v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(
            parse_key("request.headers[x-token]"),
            Ok(Attribute::RequestHeader("x-token".into()))
        );
        assert_eq!(
            parse_key("request.auth.claims[groups][0]"),
            Ok(Attribute::RequestClaims(vec!["groups".into(), "0".into()]))
        );
        assert!(matches!(
            parse_key("request.headers"),
            Err(Problem::MalformedConditionKey(..))
        ));
        assert!(matches!(
            parse_key("request.headers[]"),
            Err(Problem::MalformedConditionKey(..))
        ));
        assert!(matches!(
            parse_key("request.auth.claims[a]x"),
            Err(Problem::MalformedConditionKey(..))
        ));
        assert!(matches!(
            parse_key("source.user"),
            Err(Problem::UnknownConditionKey(_))
        ));
        assert!(matches!(
            parse_key("destination.labels[app]"),
            Err(Problem::UnsupportedConditionKey(..))
        ));
        assert_eq!(
            parse_key("experimental.envoy.filters.network.mysql_proxy[db.table]"),
            Ok(Attribute::Experimental)
        );
    }

    #[test]
    fn values() {
        assert_eq!(parse_port("8080"), Ok((8080, 8080)));
        assert_eq!(parse_port("0"), Ok((0, 0)));
        assert_eq!(parse_port("8000-8100"), Ok((8000, 8100)));
        assert!(parse_port("+80").is_err());
        assert!(parse_port("65536").is_err());
        assert!(parse_port("http").is_err());
        assert!(matches!(
            parse_port("9-8"),
            Err(Problem::InvalidPortRange(_))
        ));
        assert_eq!(
            parse_ip_block("10.0.0.1").unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert_eq!(parse_ip_block("2001:db8::1").unwrap().prefix_len(), 128);
        assert!(parse_ip_block("10.0.0.0/33").is_err());
        assert!(parse_ip_block("10.0.0").is_err());
    }
}
