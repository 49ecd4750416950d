//! Load harness: Warden against a direct connection, Envoy and HAProxy, on loopback.
//!
//! ```sh
//! cargo bench --bench load                 # the full run (about 15 minutes)
//! cargo bench --bench load -- --smoke      # every scenario for ~1.5 s (CI)
//! cargo bench --bench load -- --systems direct,warden --scenarios h1-c4,tcp-bulk
//! ```
//!
//! See docs/benchmarks.md for the topology, the scenarios and how each figure is measured.
#![forbid(unsafe_code)]

mod envoy;
mod oha;
mod pairs;
mod procs;
mod report;
mod scenarios;
mod tcp;
mod upstream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use pairs::System;
use scenarios::Scenario;

/// Command-line options (after `cargo bench --bench load --`).
#[derive(Debug, Clone)]
pub struct Opts {
    /// Short runs and small counts (CI).
    pub smoke: bool,
    /// Scenarios to run (default: all).
    pub scenarios: Vec<Scenario>,
    /// Systems to measure (default: all).
    pub systems: Vec<System>,
    /// Worker threads of every proxy.
    pub threads: usize,
    /// Interleaved rounds of every run but the idle connections (the table shows their medians).
    pub rounds: usize,
    /// Length of each fixed-rate run.
    pub duration: Duration,
    /// Length of each maximum-rate run.
    pub max_duration: Duration,
    /// Idle connections (None: as many as the descriptor limit allows, at most 10,000).
    pub idle: Option<usize>,
    /// Bytes of the TCP bulk transfer.
    pub bulk_bytes: u64,
    /// Congestion control of the TCP bulk sender's socket (None: the system's default).
    pub bulk_congestion: Option<String>,
    /// Where results go.
    pub out: PathBuf,
}

const USAGE: &str = "usage: cargo bench --bench load -- [--smoke] [--scenarios LIST] [--systems LIST]
       [--threads N] [--rounds N] [--duration SECS] [--max-duration SECS] [--idle N] [--bulk-mib N]
       [--bulk-congestion NAME|system] [--out DIR]
scenarios: h1-c4 h1-c16 h1-c64 h2-c4 h1-max h1-newconn handshake tcp-bulk idle (start to ready: always)
systems: direct warden envoy haproxy";

fn list<T>(v: &str, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| parse(s).ok_or_else(|| format!("unknown value {s:?}\n{USAGE}")))
        .collect()
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = Opts {
        smoke: false,
        scenarios: Scenario::ALL.to_vec(),
        systems: System::ALL.to_vec(),
        threads: 2,
        rounds: 3,
        duration: Duration::from_secs(10),
        max_duration: Duration::from_secs(15),
        idle: None,
        bulk_bytes: 1 << 30,
        bulk_congestion: Some("reno".to_owned()),
        out: root.join("benches").join("results"),
    };
    let (mut duration, mut max_duration, mut bulk, mut rounds) = (None, None, None, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = |name: &str| {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        let num = |name: &str, v: String| {
            v.parse::<f64>()
                .ok()
                .filter(|n| *n > 0.0)
                .ok_or_else(|| format!("{name}: expected a positive number, got {v:?}"))
        };
        match a.as_str() {
            "--bench" => {}
            "--smoke" => o.smoke = true,
            "--scenarios" => o.scenarios = list(&val(a)?, Scenario::parse)?,
            "--systems" => {
                o.systems = list(&val(a)?, |s| {
                    System::ALL.into_iter().find(|x| x.name() == s)
                })?
            }
            "--threads" => o.threads = num(a, val(a)?)? as usize,
            "--rounds" => rounds = Some(num(a, val(a)?)? as usize),
            "--duration" => duration = Some(Duration::from_secs_f64(num(a, val(a)?)?)),
            "--max-duration" => max_duration = Some(Duration::from_secs_f64(num(a, val(a)?)?)),
            "--idle" => o.idle = Some(num(a, val(a)?)? as usize),
            "--bulk-mib" => bulk = Some((num(a, val(a)?)? * 1048576.0) as u64),
            "--bulk-congestion" => {
                o.bulk_congestion = Some(val(a)?).filter(|v| v != "system");
            }
            "--out" => o.out = PathBuf::from(val(a)?),
            "-h" | "--help" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    if o.smoke {
        o.duration = Duration::from_millis(1500);
        o.max_duration = Duration::from_millis(1500);
        o.idle.get_or_insert(200);
        o.bulk_bytes = 64 << 20;
        o.rounds = 1;
    }
    o.rounds = rounds.unwrap_or(o.rounds).max(1);
    o.duration = duration.unwrap_or(o.duration);
    o.max_duration = max_duration.unwrap_or(o.max_duration);
    o.bulk_bytes = bulk.unwrap_or(o.bulk_bytes);
    o.threads = o.threads.max(1);
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve-upstream") {
        let http = [pairs::Proto::Http1, pairs::Proto::Http2]
            .map(|p| std::net::SocketAddr::from((pairs::APP_IP, pairs::app_port(p))));
        let tcp = [std::net::SocketAddr::from((
            pairs::APP_IP,
            pairs::app_port(pairs::Proto::Tcp),
        ))];
        let threads = args.get(1).and_then(|t| t.parse().ok()).unwrap_or(2);
        return match upstream::serve(&http, &tcp, threads) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("upstream: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match scenarios::run_all(&opts) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("load: some scenarios failed (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}
