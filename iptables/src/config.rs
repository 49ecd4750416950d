//! The typed settings of a capture, as istio-iptables takes them on its command line.
//!
//! Each `parse_*` function reads the string form of one istio-iptables flag (`-b '*'`,
//! `-d 15090,15021`, `-i 10.0.0.0/8,fd00::/8`, ...) and names the flag and the bad value when it
//! fails.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

/// How inbound connections reach the proxy (`-m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InterceptMode {
    /// nat-table `REDIRECT` to the inbound port; the proxy reads `SO_ORIGINAL_DST`.
    #[default]
    Redirect,
    /// mangle-table `TPROXY`: the original destination is the socket's local address. Needs
    /// a policy routing rule (`fwmark` -> `local default dev lo` table) and `IP_TRANSPARENT`.
    Tproxy,
}

impl fmt::Display for InterceptMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InterceptMode::Redirect => "REDIRECT",
            InterceptMode::Tproxy => "TPROXY",
        })
    }
}

impl FromStr for InterceptMode {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "REDIRECT" | "redirect" => Ok(InterceptMode::Redirect),
            "TPROXY" | "tproxy" => Ok(InterceptMode::Tproxy),
            _ => Err(ConfigError::new("-m", s, "expected REDIRECT or TPROXY")),
        }
    }
}

/// Which inbound ports are captured (`-b`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// `*`: every port except the excluded ones (`-d`).
    All,
    /// Only these ports (empty: no inbound capture at all).
    Only(Vec<u16>),
}

/// Which outbound destinations are captured (`-i`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundCidrs {
    /// `*`: every destination except the excluded ranges (`-x`).
    All,
    /// Only these ranges (empty: outbound capture only for `-q` ports).
    Only(Vec<IpNet>),
}

/// The address family a rule set is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 (`iptables`).
    V4,
    /// IPv6 (`ip6tables`).
    V6,
}

impl Family {
    /// The loopback address as istio-iptables writes it (`127.0.0.1/32`, `::1/128`).
    pub fn localhost(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.1/32",
            Family::V6 => "::1/128",
        }
    }

    /// The source address the proxy uses towards the app (`127.0.0.6/32`, `::6/128`).
    pub fn inbound_passthrough_source(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.6/32",
            Family::V6 => "::6/128",
        }
    }

    fn matches(self, net: &IpNet) -> bool {
        matches!(
            (self, net),
            (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
        )
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// A bad flag value: names the flag, the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag}: invalid value {value:?}: {reason}")]
pub struct ConfigError {
    /// The flag (`-b`, `-x`, ...).
    pub flag: &'static str,
    /// The offending value (one list element where the flag takes a list).
    pub value: String,
    /// What was expected.
    pub reason: String,
}

impl ConfigError {
    fn new(flag: &'static str, value: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            flag,
            value: value.to_owned(),
            reason: reason.into(),
        }
    }
}

/// Everything istio-iptables decides with its flags. `Default` is what `istioctl kube-inject`
/// passes to the init container (`-p 15001 -z 15006 -u 1337 -g 1337 -m REDIRECT -i '*' -x ""
/// -b '*' -d 15090,15021,15020`), which renders the reference rule list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureConfig {
    /// `-p`: the proxy's outbound capture port.
    pub outbound_port: u16,
    /// `-z`: the proxy's inbound capture port.
    pub inbound_port: u16,
    /// `-u`: the proxy's user id(s); their traffic is not captured again.
    pub proxy_uids: Vec<u32>,
    /// `-g`: the proxy's group id(s).
    pub proxy_gids: Vec<u32>,
    /// `-m`: REDIRECT or TPROXY for inbound.
    pub mode: InterceptMode,
    /// `-b`: inbound ports to capture.
    pub inbound_ports: InboundPorts,
    /// `-d`: inbound ports never captured (applies with `-b '*'`).
    pub inbound_exclude_ports: Vec<u16>,
    /// `-i`: outbound destinations to capture.
    pub outbound_cidrs: OutboundCidrs,
    /// `-x`: outbound destinations never captured.
    pub outbound_exclude_cidrs: Vec<IpNet>,
    /// `-q`: outbound ports always captured (whatever `-i` says).
    pub outbound_include_ports: Vec<u16>,
    /// `-o`: outbound ports never captured.
    pub outbound_exclude_ports: Vec<u16>,
    /// The HBONE port whose inbound traffic is never captured (15008).
    pub hbone_port: u16,
    /// TPROXY: the packet mark of diverted packets (`-t`, 1337).
    pub tproxy_mark: u32,
    /// TPROXY: the routing table for marked packets (`-r`, 133).
    pub tproxy_route_table: u32,
    /// Also render/apply IPv6 rules (`ip6tables`).
    pub ipv6: bool,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        CaptureConfig {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_uids: vec![1337],
            proxy_gids: vec![1337],
            mode: InterceptMode::Redirect,
            inbound_ports: InboundPorts::All,
            inbound_exclude_ports: vec![15090, 15021, 15020],
            outbound_cidrs: OutboundCidrs::All,
            outbound_exclude_cidrs: Vec::new(),
            outbound_include_ports: Vec::new(),
            outbound_exclude_ports: Vec::new(),
            hbone_port: 15008,
            tproxy_mark: 1337,
            tproxy_route_table: 133,
            ipv6: false,
        }
    }
}

impl CaptureConfig {
    /// The outbound exclusions of one family.
    pub fn exclude_cidrs(&self, family: Family) -> impl Iterator<Item = &IpNet> {
        self.outbound_exclude_cidrs
            .iter()
            .filter(move |n| family.matches(n))
    }

    /// The outbound inclusions of one family (`None` for `*`).
    pub fn include_cidrs(&self, family: Family) -> Option<Vec<&IpNet>> {
        match &self.outbound_cidrs {
            OutboundCidrs::All => None,
            OutboundCidrs::Only(v) => Some(v.iter().filter(|n| family.matches(n)).collect()),
        }
    }

    /// Checks what the parsers cannot see alone: the two capture ports must differ, and the
    /// proxy needs a user or group to exclude its own traffic (otherwise it loops).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.outbound_port == self.inbound_port {
            return Err(ConfigError::new(
                "-z",
                &self.inbound_port.to_string(),
                "the same port as the outbound port (-p)",
            ));
        }
        if self.proxy_uids.is_empty() && self.proxy_gids.is_empty() {
            return Err(ConfigError::new(
                "-u",
                "",
                "a proxy UID (-u) or GID (-g) is needed, or the proxy's own traffic loops",
            ));
        }
        Ok(())
    }
}

fn items(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

/// Parses one port number (`-p`, `-z`).
pub fn parse_port(flag: &'static str, s: &str) -> Result<u16, ConfigError> {
    match s.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConfigError::new(flag, s, "expected a port number 1-65535")),
    }
}

/// Parses a comma-separated port list (`-d`, `-q`, `-o`); empty gives an empty list.
pub fn parse_ports(flag: &'static str, s: &str) -> Result<Vec<u16>, ConfigError> {
    let mut out = Vec::new();
    for p in items(s) {
        let port = parse_port(flag, p)?;
        if !out.contains(&port) {
            out.push(port);
        }
    }
    Ok(out)
}

/// Parses `-b`: `*` or a port list.
pub fn parse_inbound_ports(s: &str) -> Result<InboundPorts, ConfigError> {
    if s.trim() == "*" {
        return Ok(InboundPorts::All);
    }
    if items(s).any(|p| p == "*") {
        return Err(ConfigError::new(
            "-b",
            s,
            "`*` cannot be combined with port numbers",
        ));
    }
    Ok(InboundPorts::Only(parse_ports("-b", s)?))
}

/// Parses a comma-separated CIDR list (`-x`); a bare address is a /32 or /128.
pub fn parse_cidrs(flag: &'static str, s: &str) -> Result<Vec<IpNet>, ConfigError> {
    let mut out = Vec::new();
    for c in items(s) {
        let net = match c.parse::<IpNet>() {
            Ok(n) => n,
            Err(_) => match c.parse::<std::net::IpAddr>() {
                Ok(ip) => IpNet::from(ip),
                Err(_) => {
                    return Err(ConfigError::new(
                        flag,
                        c,
                        "expected a CIDR such as 10.0.0.0/8 or fd00::/8",
                    ));
                }
            },
        };
        // istio-iptables writes ranges in canonical form (host bits cleared).
        let net = net.trunc();
        if !out.contains(&net) {
            out.push(net);
        }
    }
    Ok(out)
}

/// Parses `-i`: `*` or a CIDR list.
pub fn parse_outbound_cidrs(s: &str) -> Result<OutboundCidrs, ConfigError> {
    if s.trim() == "*" {
        return Ok(OutboundCidrs::All);
    }
    if items(s).any(|p| p == "*") {
        return Err(ConfigError::new(
            "-i",
            s,
            "`*` cannot be combined with ranges",
        ));
    }
    Ok(OutboundCidrs::Only(parse_cidrs("-i", s)?))
}

/// Parses a comma-separated list of numeric user or group ids (`-u`, `-g`).
pub fn parse_ids(flag: &'static str, s: &str) -> Result<Vec<u32>, ConfigError> {
    let mut out = Vec::new();
    for id in items(s) {
        let v = id
            .parse::<u32>()
            .map_err(|_| ConfigError::new(flag, id, "expected a numeric id such as 1337"))?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_errors_name_the_flag() {
        assert_eq!(
            parse_ports("-d", "15090, 15021,,15090").unwrap(),
            vec![15090, 15021]
        );
        assert_eq!(parse_ports("-d", "").unwrap(), Vec::<u16>::new());
        let e = parse_ports("-d", "15090,http").unwrap_err();
        assert_eq!(e.flag, "-d");
        assert_eq!(e.value, "http");
        assert_eq!(parse_inbound_ports("*").unwrap(), InboundPorts::All);
        assert!(parse_inbound_ports("*,80").is_err());
        assert_eq!(parse_port("-p", "0").unwrap_err().flag, "-p");
        let c = parse_cidrs("-x", "10.1.2.3/8,fd00::1,192.168.0.1").unwrap();
        let s: Vec<String> = c.iter().map(|n| n.to_string()).collect();
        assert_eq!(s, ["10.0.0.0/8", "fd00::1/128", "192.168.0.1/32"]);
        let e = parse_cidrs("-x", "10.0.0.0/33").unwrap_err();
        assert_eq!((e.flag, e.value.as_str()), ("-x", "10.0.0.0/33"));
        assert!(parse_ids("-u", "istio-proxy").is_err());
        assert_eq!(
            "TPROXY".parse::<InterceptMode>().unwrap(),
            InterceptMode::Tproxy
        );
        assert!("DNAT".parse::<InterceptMode>().is_err());
    }

    #[test]
    fn validate_rejects_loops() {
        let mut c = CaptureConfig::default();
        assert!(c.validate().is_ok());
        c.inbound_port = c.outbound_port;
        assert_eq!(c.validate().unwrap_err().flag, "-z");
        let c = CaptureConfig {
            proxy_uids: vec![],
            proxy_gids: vec![],
            ..CaptureConfig::default()
        };
        assert!(c.validate().is_err());
    }
}
