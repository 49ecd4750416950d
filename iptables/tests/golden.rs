//! Golden tests: the rules rendered for istio-iptables' default sidecar settings are exactly the
//! reference list (docs/istio-reference.md §6), and each flag changes exactly what it changes in
//! istio-iptables. Expected lists are written out by hand from istio-iptables' behaviour.

use warden_iptables::config::{
    parse_cidrs, parse_ids, parse_inbound_ports, parse_outbound_cidrs, parse_ports,
};
use warden_iptables::{CaptureConfig, Family, InterceptMode, Table, render};

fn nat(c: &CaptureConfig, f: Family) -> Vec<String> {
    render(c, f).lines(Table::Nat)
}

fn lines(s: &str) -> Vec<String> {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The reference's default list, in its order.
const DEFAULT: &str = "
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
";

/// `DEFAULT` with `replace` applied to its lines: (old line, new lines).
fn default_with(edits: &[(&str, &[&str])]) -> Vec<String> {
    let mut out = Vec::new();
    'line: for l in lines(DEFAULT) {
        for (old, new) in edits {
            if l == *old {
                out.extend(new.iter().map(|s| (*s).to_owned()));
                continue 'line;
            }
        }
        out.push(l);
    }
    out
}

#[test]
fn defaults_are_the_reference_list() {
    let c = CaptureConfig::default();
    assert_eq!(nat(&c, Family::V4), lines(DEFAULT));
    let set = render(&c, Family::V4);
    assert_eq!(set.tables(), vec![Table::Nat]);
    assert!(set.routes.is_empty());
}

#[test]
fn flag_p_outbound_port() {
    let c = CaptureConfig {
        outbound_port: 16001,
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[(
            "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            &["-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001"]
        )])
    );
}

#[test]
fn flag_z_inbound_port() {
    let c = CaptureConfig {
        inbound_port: 16006,
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[(
            "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            &["-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006"]
        )])
    );
}

#[test]
fn flag_u_and_g_ids() {
    let c = CaptureConfig {
        proxy_uids: parse_ids("-u", "3,4").unwrap(),
        proxy_gids: parse_ids("-g", "1").unwrap(),
        ..Default::default()
    };
    let out = nat(&c, Family::V4);
    let owner: Vec<&String> = out.iter().filter(|l| l.contains("-owner")).collect();
    assert_eq!(
        owner,
        [
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 3 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 3 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 3 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 4 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 4 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --uid-owner 4 -j RETURN",
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1 -j ISTIO_IN_REDIRECT",
            "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1 -j RETURN",
            "-A ISTIO_OUTPUT -m owner --gid-owner 1 -j RETURN",
        ]
    );
    assert_eq!(out.len(), lines(DEFAULT).len() + 3);
}

#[test]
fn flag_b_inbound_ports_include() {
    let c = CaptureConfig {
        inbound_ports: parse_inbound_ports("32000,31000").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[
            ("-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN", &[]),
            ("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN", &[]),
            ("-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN", &[]),
            (
                "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT",
                &[
                    "-A ISTIO_INBOUND -p tcp --dport 32000 -j ISTIO_IN_REDIRECT",
                    "-A ISTIO_INBOUND -p tcp --dport 31000 -j ISTIO_IN_REDIRECT",
                ]
            ),
        ])
    );
}

#[test]
fn flag_b_empty_disables_inbound_capture() {
    let c = CaptureConfig {
        inbound_ports: parse_inbound_ports("").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[
            ("-A PREROUTING -p tcp -j ISTIO_INBOUND", &[]),
            ("-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN", &[]),
            ("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN", &[]),
            ("-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN", &[]),
            ("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT", &[]),
        ])
    );
}

#[test]
fn flag_d_inbound_ports_exclude() {
    let c = CaptureConfig {
        inbound_exclude_ports: parse_ports("-d", "22,7000").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[
            (
                "-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN",
                &[
                    "-A ISTIO_INBOUND -p tcp --dport 22 -j RETURN",
                    "-A ISTIO_INBOUND -p tcp --dport 7000 -j RETURN"
                ]
            ),
            ("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN", &[]),
            ("-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN", &[]),
        ])
    );
}

#[test]
fn flag_i_outbound_ranges_include() {
    let c = CaptureConfig {
        outbound_cidrs: parse_outbound_cidrs("9.9.0.0/16,fd00::/8").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[(
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            &["-A ISTIO_OUTPUT -d 9.9.0.0/16 -j ISTIO_REDIRECT"]
        )])
    );
    // Empty: no outbound capture.
    let c = CaptureConfig {
        outbound_cidrs: parse_outbound_cidrs("").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[("-A ISTIO_OUTPUT -j ISTIO_REDIRECT", &[])])
    );
}

#[test]
fn flag_x_outbound_ranges_exclude() {
    let c = CaptureConfig {
        outbound_exclude_cidrs: parse_cidrs("-x", "1.1.0.0/16,10.96.0.10").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[(
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            &[
                "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
                "-A ISTIO_OUTPUT -d 1.1.0.0/16 -j RETURN",
                "-A ISTIO_OUTPUT -d 10.96.0.10/32 -j RETURN",
            ]
        )])
    );
}

#[test]
fn flag_q_outbound_ports_include() {
    let c = CaptureConfig {
        outbound_cidrs: parse_outbound_cidrs("").unwrap(),
        outbound_include_ports: parse_ports("-q", "32000,31000").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[(
            "-A ISTIO_OUTPUT -j ISTIO_REDIRECT",
            &[
                "-A ISTIO_OUTPUT -p tcp --dport 32000 -j ISTIO_REDIRECT",
                "-A ISTIO_OUTPUT -p tcp --dport 31000 -j ISTIO_REDIRECT",
            ]
        )])
    );
}

#[test]
fn flag_o_outbound_ports_exclude() {
    let c = CaptureConfig {
        outbound_exclude_ports: parse_ports("-o", "22,80,443").unwrap(),
        ..Default::default()
    };
    assert_eq!(
        nat(&c, Family::V4),
        default_with(&[(
            "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            &[
                "-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp --dport 80 -j RETURN",
                "-A ISTIO_OUTPUT -p tcp --dport 443 -j RETURN",
                "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            ]
        )])
    );
}

#[test]
fn ipv6_uses_v6_addresses_and_v6_ranges_only() {
    let c = CaptureConfig {
        outbound_exclude_cidrs: parse_cidrs("-x", "10.0.0.0/8,fd00:1::/64").unwrap(),
        ipv6: true,
        ..Default::default()
    };
    let v6 = nat(&c, Family::V6);
    let expected = default_with(&[
        (
            "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN",
            &["-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN"],
        ),
        (
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT",
            &["-A ISTIO_OUTPUT -o lo ! -d ::1/128 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"],
        ),
        (
            "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT",
            &["-A ISTIO_OUTPUT -o lo ! -d ::1/128 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT"],
        ),
        (
            "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN",
            &[
                "-A ISTIO_OUTPUT -d ::1/128 -j RETURN",
                "-A ISTIO_OUTPUT -d fd00:1::/64 -j RETURN",
            ],
        ),
    ]);
    assert_eq!(v6, expected);
    assert!(nat(&c, Family::V4).contains(&"-A ISTIO_OUTPUT -d 10.0.0.0/8 -j RETURN".to_owned()));
    assert_eq!(warden_iptables::render_all(&c).len(), 2);
}

#[test]
fn flag_m_tproxy_uses_mangle_and_policy_routing() {
    let c = CaptureConfig {
        mode: InterceptMode::Tproxy,
        ..Default::default()
    };
    let set = render(&c, Family::V4);
    assert_eq!(set.tables(), vec![Table::Nat, Table::Mangle]);
    // nat: outbound unchanged, inbound is not redirected there any more.
    assert_eq!(
        set.lines(Table::Nat),
        default_with(&[
            ("-A PREROUTING -p tcp -j ISTIO_INBOUND", &[]),
            ("-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN", &[]),
            ("-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN", &[]),
            ("-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN", &[]),
            ("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT", &[]),
        ])
    );
    assert_eq!(
        set.lines(Table::Mangle),
        lines(
            "
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A PREROUTING -p tcp -m mark --mark 1337 -j CONNMARK --save-mark
-A OUTPUT -p tcp -o lo -m mark --mark 1337 -j RETURN
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --gid-owner 1337 -j MARK --set-mark 1338
-A OUTPUT -p tcp -m connmark --mark 1337 -j CONNMARK --restore-mark
-A ISTIO_INBOUND -p tcp -m mark --mark 1337 -j RETURN
-A ISTIO_INBOUND -p tcp -s 127.0.0.6/32 -i lo -j RETURN
-A ISTIO_INBOUND -p tcp -i lo -m mark ! --mark 1338 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT
-A ISTIO_INBOUND -p tcp -j ISTIO_TPROXY
-A ISTIO_DIVERT -j MARK --set-mark 1337
-A ISTIO_DIVERT -j ACCEPT
-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006
"
        )
    );
    let routes: Vec<String> = set.routes.iter().map(|r| r.join(" ")).collect();
    assert_eq!(
        routes,
        [
            "-f inet rule add fwmark 1337 lookup 133",
            "-f inet route replace local default dev lo table 133"
        ]
    );
    let v6 = render(&c, Family::V6);
    assert!(
        v6.lines(Table::Mangle).contains(
            &"-A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY --tproxy-mark 1337/0xffffffff --on-port 15006"
                .to_owned()
        )
    );
    assert_eq!(
        v6.routes[1].join(" "),
        "-f inet6 route replace local ::/0 dev lo table 133"
    );
}

#[test]
fn dry_run_is_a_restore_transaction() {
    let text = warden_iptables::dry_run_text(&CaptureConfig::default());
    let expected_rules: Vec<String> = lines(DEFAULT);
    let body: Vec<&str> = text.lines().collect();
    assert_eq!(body[0], "# IPv4 (iptables-restore --noflush)");
    assert_eq!(body[1], "*nat");
    assert_eq!(
        &body[2..6],
        [
            ":ISTIO_INBOUND - [0:0]",
            ":ISTIO_IN_REDIRECT - [0:0]",
            ":ISTIO_REDIRECT - [0:0]",
            ":ISTIO_OUTPUT - [0:0]"
        ]
    );
    assert_eq!(body[6..body.len() - 1], expected_rules[..]);
    assert_eq!(*body.last().unwrap(), "COMMIT");
}
