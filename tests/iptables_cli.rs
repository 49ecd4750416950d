//! `warden iptables` flags as the user types them (no root needed: `--dry-run` prints the
//! transaction; bad values are refused before anything runs).

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

fn warden(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn dry_run_prints_one_transaction_per_family_with_the_flags_applied() {
    let out = warden(&[
        "iptables",
        "--dry-run",
        "-p",
        "16001",
        "-z",
        "16006",
        "-u",
        "1000",
        "-g",
        "1000",
        "-b",
        "8080,9090",
        "-i",
        "10.96.0.0/12,fd00::/8",
        "-x",
        "10.96.0.1",
        "-q",
        "5432",
        "-o",
        "22",
        "--ipv6",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let v4 = text.split("# IPv6").next().unwrap();
    let v6 = text.split("# IPv6").nth(1).expect("an IPv6 transaction");
    for line in [
        "# IPv4 (iptables-restore --noflush)",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 16001",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 16006",
        "-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_INBOUND -p tcp --dport 9090 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_OUTPUT -p tcp --dport 22 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --uid-owner 1000 -j RETURN",
        "-A ISTIO_OUTPUT -m owner --gid-owner 1000 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.96.0.1/32 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp --dport 5432 -j ISTIO_REDIRECT",
        "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
    ] {
        assert!(v4.lines().any(|l| l == line), "missing {line:?} in:\n{v4}");
    }
    assert!(!v4.contains("fd00::/8") && !v4.contains("::6/128"));
    assert!(
        v6.lines()
            .any(|l| l == "-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT"),
        "{v6}"
    );
    assert!(
        v6.lines()
            .any(|l| l == "-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN"),
        "{v6}"
    );
    assert!(!v6.contains("10.96."));
    assert_eq!(text.matches("COMMIT").count(), 2);
}

#[test]
fn bad_values_name_the_flag_and_nothing_is_applied() {
    for (args, expected) in [
        (
            &["-x", "10.0.0.0/33"][..],
            "-x: invalid value \"10.0.0.0/33\"",
        ),
        (&["-b", "http"][..], "-b: invalid value \"http\""),
        (
            &["-m", "DNAT"][..],
            "-m: invalid value \"DNAT\": expected REDIRECT or TPROXY",
        ),
        (
            &["-z", "15001"][..],
            "-z: invalid value \"15001\": the same port as the outbound port (-p)",
        ),
        (
            &["-u", "istio-proxy"][..],
            "-u: invalid value \"istio-proxy\"",
        ),
        (
            &["--backend", "ebpf"][..],
            "--backend: invalid value \"ebpf\"",
        ),
    ] {
        let mut a = vec!["iptables"];
        a.extend_from_slice(args);
        if args[0] != "--backend" {
            a.push("--dry-run");
        }
        let out = warden(&a);
        assert!(!out.status.success(), "{args:?} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}
