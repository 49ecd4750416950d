//! The scenarios, run scenario by scenario with every system in turn, and the figures taken from them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Opts;
use crate::oha::{self, Load, Outcome};
use crate::pairs::{self, Env, Pair, Proto, System};
use crate::procs::{Proc, Sample};
use crate::report::{self, Report, RunResult, SystemResult};
use crate::tcp;

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Scenario {
    /// HTTP/1.1 keep-alive, 1 KiB, 1,000 rps over 4 connections (Istio's setup).
    H1C4,
    /// The same over 16 connections.
    H1C16,
    /// The same over 64 connections.
    H1C64,
    /// HTTP/2 (prior knowledge), 1,000 rps over 4 connections.
    H2C4,
    /// HTTP/1.1 keep-alive, closed loop over 64 connections: the maximum rate.
    H1Max,
    /// A new connection per request, closed loop over 4 connections.
    H1NewConn,
    /// Full mTLS handshakes per second with the server sidecar.
    Handshake,
    /// 1 GiB through the pair.
    TcpBulk,
    /// Idle mTLS connections: memory per connection.
    Idle,
}

impl Scenario {
    /// Every scenario, in run order.
    pub const ALL: [Scenario; 9] = [
        Scenario::H1C4,
        Scenario::H1C16,
        Scenario::H1C64,
        Scenario::H1Max,
        Scenario::H1NewConn,
        Scenario::Handshake,
        Scenario::H2C4,
        Scenario::Idle,
        Scenario::TcpBulk,
    ];

    /// The command-line name.
    pub fn id(self) -> &'static str {
        match self {
            Scenario::H1C4 => "h1-c4",
            Scenario::H1C16 => "h1-c16",
            Scenario::H1C64 => "h1-c64",
            Scenario::H2C4 => "h2-c4",
            Scenario::H1Max => "h1-max",
            Scenario::H1NewConn => "h1-newconn",
            Scenario::Handshake => "handshake",
            Scenario::TcpBulk => "tcp-bulk",
            Scenario::Idle => "idle",
        }
    }

    /// From the command-line name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.id() == s)
    }

    /// Interleaved rounds: `--rounds` for every run whose figure moves from run to run by as
    /// much as the proxies differ (latency percentiles, maximum rates, handshakes, MB/s); one
    /// for the idle connections, whose memory per connection does not.
    pub fn rounds(self, opts: &Opts) -> usize {
        match self {
            Scenario::Idle => 1,
            _ => opts.rounds,
        }
    }

    /// The protocol of the service the pair carries for this scenario.
    pub fn proto(self) -> Proto {
        match self {
            Scenario::H2C4 => Proto::Http2,
            Scenario::TcpBulk | Scenario::Idle => Proto::Tcp,
            _ => Proto::Http1,
        }
    }

    fn load(self, opts: &Opts) -> Option<Load> {
        let fixed = |connections, http2| Load {
            connections,
            rate: Some(1000),
            http2,
            new_connection: false,
            duration: opts.duration,
        };
        Some(match self {
            Scenario::H1C4 => fixed(4, false),
            Scenario::H1C16 => fixed(16, false),
            Scenario::H1C64 => fixed(64, false),
            Scenario::H2C4 => fixed(4, true),
            Scenario::H1Max => Load {
                connections: 64,
                rate: None,
                http2: false,
                new_connection: false,
                duration: opts.max_duration,
            },
            Scenario::H1NewConn => Load {
                connections: 4,
                rate: None,
                http2: false,
                new_connection: true,
                duration: opts.max_duration,
            },
            _ => return None,
        })
    }
}

fn tools_dir() -> std::path::PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("bench-tools")
}

fn version(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .map(|o| {
            let mut t = String::from_utf8_lossy(&o.stdout).into_owned();
            t.push_str(&String::from_utf8_lossy(&o.stderr));
            t.lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_default()
}

/// Idle connections this machine's descriptor limit allows (each proxy holds two per connection).
fn idle_capacity() -> usize {
    let hard = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(4)
                        .and_then(|v| v.parse::<usize>().ok())
                })
        })
        .unwrap_or(20_000);
    ((hard.saturating_sub(600)) / 2).min(10_000)
}

/// A run directory of its own under `runs`, named by the UTC start (`-2`, `-3`... when a run
/// started in the same second), and its name.
fn fresh_run_dir(runs: &std::path::Path) -> Result<(String, std::path::PathBuf), String> {
    std::fs::create_dir_all(runs).map_err(|e| format!("{}: {e}", runs.display()))?;
    let stamp = report::timestamp();
    for n in 1..100 {
        let name = if n == 1 {
            stamp.clone()
        } else {
            format!("{stamp}-{n}")
        };
        let dir = runs.join(&name);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((name, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        }
    }
    Err(format!(
        "{}: 99 runs started at {stamp} already",
        runs.display()
    ))
}

/// Runs everything; Ok(false) when a scenario failed for a system that was not skipped.
pub fn run_all(opts: &Opts) -> Result<bool, String> {
    let tools = tools_dir();
    let (stamp, dir) = fresh_run_dir(&tools.join("runs"))?;
    let warden = std::path::PathBuf::from(env!("CARGO_BIN_EXE_warden"));
    let pki = dir.join("pki");
    pairs::make_pki(&warden, &pki, &["client", "server"])?;
    let oha_bin = oha::ensure_oha(&tools)?;
    let want = |s: System| opts.systems.contains(&s);
    let env = Env {
        warden: warden.clone(),
        envoy: if want(System::Envoy) {
            crate::envoy::ensure_envoy(&tools)
        } else {
            Err("not selected".into())
        },
        haproxy: if want(System::Haproxy) {
            find_haproxy()
        } else {
            Err("not selected".into())
        },
        threads: opts.threads,
        dir: dir.clone(),
        pki,
    };
    let load_before = report::loadavg();
    let mut rep = Report {
        started: stamp.clone(),
        smoke: opts.smoke,
        threads: opts.threads,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        duration_s: opts.duration.as_secs_f64(),
        max_duration_s: opts.max_duration.as_secs_f64(),
        rounds: opts.rounds,
        load_before,
        load_after: String::new(),
        bulk_congestion: if opts.scenarios.contains(&Scenario::TcpBulk) {
            bulk_congestion(opts)
        } else {
            String::new()
        },
        versions: BTreeMap::new(),
        systems: Vec::new(),
    };
    rep.versions
        .insert("warden".into(), version(&warden, "--version"));
    rep.versions
        .insert("oha".into(), version(&oha_bin, "--version"));
    if let Ok(e) = &env.envoy {
        rep.versions.insert("envoy".into(), version(e, "--version"));
    }
    if let Ok(h) = &env.haproxy {
        rep.versions.insert("haproxy".into(), version(h, "-v"));
    }

    // The upstream: this binary again, in its own process.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(exe);
    cmd.arg("--serve-upstream").arg(opts.threads.to_string());
    let mut upstream = Proc::spawn("upstream", cmd, &dir.join("upstream.log"))?;
    crate::procs::wait_listening(
        &mut upstream,
        SocketAddr::from((pairs::APP_IP, pairs::app_port(Proto::Tcp))),
        Duration::from_secs(10),
    )?;
    crate::procs::wait_listening(
        &mut upstream,
        SocketAddr::from((pairs::APP_IP, pairs::app_port(Proto::Http2))),
        Duration::from_secs(10),
    )?;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let idle_n = opts.idle.unwrap_or_else(idle_capacity).min(idle_capacity());
    let mut results: Vec<SystemResult> =
        opts.systems.iter().map(|&s| SystemResult::new(s)).collect();
    for res in &mut results {
        let skip = match res.system {
            System::Envoy => env.envoy.as_ref().err(),
            System::Haproxy => env.haproxy.as_ref().err(),
            _ => None,
        };
        if let Some(reason) = skip {
            eprintln!("skipped: {}: {reason}", res.system.name());
            res.skipped = Some(reason.clone());
        }
    }
    let measured = results.iter().filter(|r| r.skipped.is_none()).count();
    let total_steps: usize = opts
        .scenarios
        .iter()
        .map(|&s| s.rounds(opts) * measured)
        .sum();
    let mut step = 0;
    let mut all_ok = true;
    // Scenario by scenario, and within a scenario round by round, every system in turn: the
    // figures compared in one row are taken minutes apart at most, not a whole system's run
    // apart, and each round gets a freshly started pair.
    let cx = Ctx {
        opts,
        oha: &oha_bin,
        rt: &rt,
        env: &env,
        idle_n,
    };
    let mut rounds: BTreeMap<(usize, Scenario), Vec<RunResult>> = BTreeMap::new();
    for &s in &opts.scenarios {
        let n = s.rounds(opts);
        for round in 1..=n {
            for (k, res) in results.iter_mut().enumerate() {
                if res.skipped.is_some() {
                    continue;
                }
                step += 1;
                eprintln!(
                    "[{step}/{total_steps}] {:<8} {:<11} {}{}",
                    res.system.name(),
                    s.id(),
                    describe(s, opts, idle_n),
                    if n > 1 {
                        format!(", round {round} of {n}")
                    } else {
                        String::new()
                    }
                );
                let t = Instant::now();
                let r = measure(s, res, &cx);
                let r = r.unwrap_or_else(|e| {
                    all_ok = false;
                    RunResult::failed(e)
                });
                eprintln!("      {} ({:.1} s)", r.summary(), t.elapsed().as_secs_f64());
                rounds.entry((k, s)).or_default().push(r);
            }
        }
    }
    for ((k, s), rs) in rounds {
        results[k]
            .runs
            .insert(s.id().into(), RunResult::median_of(rs));
    }
    rep.systems = results;
    drop(upstream);
    rep.load_after = report::loadavg();
    let written = report::write(&rep, &opts.out)?;
    println!("{}", report::markdown(&rep));
    for w in written {
        eprintln!("wrote {}", w.display());
    }
    Ok(all_ok)
}

/// What every measurement needs.
#[derive(Clone, Copy)]
struct Ctx<'a> {
    opts: &'a Opts,
    oha: &'a Path,
    rt: &'a tokio::runtime::Runtime,
    env: &'a Env,
    idle_n: usize,
}

/// Starts `res.system`'s pair for `s`, warms it up, runs `s` once and stops the pair; records
/// start-to-ready and RSS figures in `res`.
fn measure(s: Scenario, res: &mut SystemResult, cx: &Ctx<'_>) -> Result<RunResult, String> {
    let (opts, env) = (cx.opts, cx.env);
    let proto = s.proto();
    let mut pair = pairs::start(res.system, proto, env)
        .map_err(|e| format!("starting the {} pair: {e}", pairs::proto_label(proto)))?;
    res.ready_ms
        .extend(pair.ready.iter().map(|d| d.as_secs_f64() * 1e3));
    if proto != Proto::Tcp {
        // Warm up (connections, pools, caches) at the fixed rate; not counted.
        let warm = Load {
            connections: 4,
            rate: Some(1000),
            http2: proto == Proto::Http2,
            new_connection: false,
            duration: if opts.smoke {
                Duration::from_millis(300)
            } else {
                Duration::from_secs(2)
            },
        };
        if let Err(e) = oha::run(cx.oha, pair.entry, &warm) {
            eprintln!("warning: warm-up of {} failed: {e}", res.system.name());
        }
    }
    let r = run_one(s, &mut pair, cx)?;
    pair.check_alive()?;
    if s == Scenario::H1C4 {
        res.steady_rss = pair.samples().iter().map(|s| s.rss).collect();
    }
    if proto == Proto::Http1 {
        // The peak over every HTTP/1.1 pair, per process (client, server).
        let hwm: Vec<u64> = pair.samples().iter().map(|s| s.hwm).collect();
        res.peak_rss.resize(hwm.len().max(res.peak_rss.len()), 0);
        for (p, h) in res.peak_rss.iter_mut().zip(hwm) {
            *p = (*p).max(h);
        }
    }
    Ok(r)
}

/// The TCP bulk sender's congestion control, as the report names it.
pub fn bulk_congestion(opts: &Opts) -> String {
    match &opts.bulk_congestion {
        Some(cc) => cc.clone(),
        None => format!("{} (system default)", tcp::default_congestion()),
    }
}

fn describe(s: Scenario, opts: &Opts, idle_n: usize) -> String {
    match s {
        Scenario::TcpBulk => format!(
            "{} MiB through the pair, sender congestion control {}",
            opts.bulk_bytes >> 20,
            bulk_congestion(opts)
        ),
        Scenario::Idle => format!("{idle_n} idle connections"),
        Scenario::Handshake => format!(
            "full mTLS handshakes, 4 at a time, {:.1} s",
            opts.max_duration.as_secs_f64()
        ),
        _ => {
            let l = s.load(opts).expect("HTTP scenario");
            format!(
                "{} {} conns, {}, {:.1} s",
                if l.http2 { "HTTP/2" } else { "HTTP/1.1" },
                l.connections,
                match l.rate {
                    Some(r) => format!("{r} rps open loop"),
                    None if l.new_connection => "new connection per request".into(),
                    None => "max rate".into(),
                },
                l.duration.as_secs_f64()
            )
        }
    }
}

fn cpu(samples: &[Sample]) -> f64 {
    samples.iter().map(|s| s.cpu).sum()
}

fn run_one(s: Scenario, pair: &mut Pair, cx: &Ctx<'_>) -> Result<RunResult, String> {
    let Ctx {
        opts,
        oha: oha_bin,
        rt,
        env,
        idle_n,
    } = *cx;
    let before = pair.samples();
    let mut r = RunResult::default();
    match s {
        Scenario::TcpBulk => {
            r.mb_per_s = Some(rt.block_on(tcp::bulk(
                pair.entry,
                opts.bulk_bytes,
                opts.bulk_congestion.as_deref(),
            ))?);
        }
        Scenario::Idle => {
            if pair.procs.is_empty() {
                r.note = Some("no proxy".into());
                return Ok(r);
            }
            let conns = rt.block_on(tcp::open_idle(pair.entry, idle_n))?;
            std::thread::sleep(Duration::from_secs(1));
            let after = pair.samples();
            let delta: f64 = after
                .iter()
                .zip(&before)
                .map(|(a, b)| a.rss as f64 - b.rss as f64)
                .sum();
            // Per connection per sidecar: the pair holds each connection twice.
            r.idle_kib_per_conn = Some(delta / 1024.0 / idle_n as f64 / pair.procs.len() as f64);
            r.idle_conns = Some(idle_n);
            r.rss = after.iter().map(|s| s.rss).collect();
            drop(conns);
            std::thread::sleep(Duration::from_millis(500));
            return Ok(r);
        }
        Scenario::Handshake => {
            let Some(inbound) = pair.inbound else {
                r.note = Some("no proxy".into());
                return Ok(r);
            };
            let cfg = tcp::mesh_client(&env.pki.join("client"))?;
            r.handshakes_per_s =
                Some(rt.block_on(tcp::handshakes(inbound, cfg, 4, opts.max_duration))?);
        }
        _ => {
            let load = s.load(opts).expect("HTTP scenario");
            let o: Outcome = oha::run(oha_bin, pair.entry, &load)?;
            if o.ok == 0 || o.failed > o.ok / 1000 {
                return Err(format!(
                    "{} of {} requests failed",
                    o.failed,
                    o.ok + o.failed
                ));
            }
            r.http = Some(o);
        }
    }
    let after = pair.samples();
    r.cpu_s = cpu(&after) - cpu(&before);
    if let Some(o) = &r.http {
        r.cpu_per_1k = Some(r.cpu_s / o.ok as f64 * 1000.0);
    }
    r.rss = after.iter().map(|s| s.rss).collect();
    Ok(r)
}

fn find_haproxy() -> Result<std::path::PathBuf, String> {
    let p = std::env::var_os("HAPROXY_BIN")
        .map(Into::into)
        .unwrap_or_else(|| "haproxy".into());
    match Command::new(&p).arg("-v").output() {
        Ok(o) if o.status.success() => Ok(p),
        _ => Err("haproxy is not installed (apt-get install haproxy; .ci/run does)".into()),
    }
}
