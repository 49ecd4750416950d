//! Results: JSON, a Markdown table, and SVG plots (plotters) under `benches/results/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::oha::Outcome;
use crate::pairs::System;

/// A whole run.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// UTC start, `YYYYMMDDTHHMMSSZ`.
    pub started: String,
    /// Smoke mode (numbers mean nothing).
    pub smoke: bool,
    /// Worker threads per proxy.
    pub threads: usize,
    /// CPUs of the machine.
    pub cores: usize,
    /// Seconds per fixed-rate run.
    pub duration_s: f64,
    /// Seconds per maximum-rate run.
    pub max_duration_s: f64,
    /// Interleaved rounds of every run but the idle connections.
    pub rounds: usize,
    /// `/proc/loadavg` before.
    pub load_before: String,
    /// `/proc/loadavg` after.
    pub load_after: String,
    /// Congestion control of the TCP bulk sender's socket.
    pub bulk_congestion: String,
    /// Versions of the tools.
    pub versions: BTreeMap<String, String>,
    /// Per system.
    pub systems: Vec<SystemResult>,
}

/// One system's results.
#[derive(Debug, serde::Serialize)]
pub struct SystemResult {
    /// Which.
    pub system: System,
    /// Why it was not measured.
    pub skipped: Option<String>,
    /// Start to ready of every proxy process started, ms.
    pub ready_ms: Vec<f64>,
    /// VmRSS of client and server sidecar at the end of `h1-c4`, bytes.
    pub steady_rss: Vec<u64>,
    /// VmHWM of client and server after the HTTP/1.1 scenarios, bytes.
    pub peak_rss: Vec<u64>,
    /// By scenario id.
    pub runs: BTreeMap<String, RunResult>,
}

impl SystemResult {
    /// Empty.
    pub fn new(system: System) -> Self {
        Self {
            system,
            skipped: None,
            ready_ms: vec![],
            steady_rss: vec![],
            peak_rss: vec![],
            runs: BTreeMap::new(),
        }
    }
}

/// One scenario's figures.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunResult {
    /// Why it failed.
    pub error: Option<String>,
    /// Why there is nothing to measure.
    pub note: Option<String>,
    /// oha's figures.
    pub http: Option<Outcome>,
    /// CPU seconds of both proxies during the run.
    pub cpu_s: f64,
    /// CPU seconds of both proxies per 1,000 requests.
    pub cpu_per_1k: Option<f64>,
    /// VmRSS of each proxy after the run, bytes.
    pub rss: Vec<u64>,
    /// TCP bulk throughput, MB/s.
    pub mb_per_s: Option<f64>,
    /// RSS per idle connection per sidecar, KiB.
    pub idle_kib_per_conn: Option<f64>,
    /// Idle connections held.
    pub idle_conns: Option<usize>,
    /// Full handshakes per second.
    pub handshakes_per_s: Option<f64>,
    /// Each round's own figures when the run was repeated; the figures above are their
    /// medians (latency percentile by percentile).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<RunResult>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

impl RunResult {
    /// A failed run.
    pub fn failed(e: String) -> Self {
        Self {
            error: Some(e),
            ..Self::default()
        }
    }

    /// The rounds of one system and scenario as one result: each figure is the median over
    /// the rounds. A failed round fails the whole.
    pub fn median_of(mut rs: Vec<RunResult>) -> Self {
        let n = rs.len();
        if n == 1 {
            return rs.pop().expect("one round");
        }
        if let Some((i, e)) = rs
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.error.as_ref().map(|e| (i, e)))
        {
            return Self::failed(format!("round {} of {n}: {e}", i + 1));
        }
        if let Some(r) = rs.iter().find(|r| r.note.is_some()) {
            return r.clone();
        }
        let med = |f: &dyn Fn(&RunResult) -> Option<f64>| median(rs.iter().filter_map(f).collect());
        let http = rs.iter().all(|r| r.http.is_some()).then(|| {
            let o = |r: &RunResult| r.http.clone().unwrap_or_default();
            Outcome {
                ok: rs.iter().map(|r| o(r).ok).sum(),
                failed: rs.iter().map(|r| o(r).failed).sum(),
                rps: med(&|r| Some(o(r).rps)).unwrap_or_default(),
                latency_ms: std::array::from_fn(|i| {
                    med(&|r| Some(o(r).latency_ms[i])).unwrap_or_default()
                }),
            }
        });
        Self {
            error: None,
            note: None,
            http,
            cpu_s: rs.iter().map(|r| r.cpu_s).sum(),
            cpu_per_1k: med(&|r| r.cpu_per_1k),
            rss: rs.last().map(|r| r.rss.clone()).unwrap_or_default(),
            mb_per_s: med(&|r| r.mb_per_s),
            idle_kib_per_conn: med(&|r| r.idle_kib_per_conn),
            idle_conns: rs.last().and_then(|r| r.idle_conns),
            handshakes_per_s: med(&|r| r.handshakes_per_s),
            rounds: rs,
        }
    }

    /// One line for the progress output.
    pub fn summary(&self) -> String {
        if let Some(e) = &self.error {
            return format!("FAILED: {e}");
        }
        if let Some(n) = &self.note {
            return format!("n/a: {n}");
        }
        let mut s = String::new();
        if let Some(o) = &self.http {
            let _ = write!(
                s,
                "{} ok, {:.0} rps, p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} ms",
                o.ok, o.rps, o.latency_ms[0], o.latency_ms[1], o.latency_ms[2], o.latency_ms[3]
            );
        }
        if let Some(c) = self.cpu_per_1k {
            let _ = write!(s, ", {c:.3} CPU-s/1k req");
        }
        if let Some(v) = self.mb_per_s {
            let _ = write!(s, "{v:.0} MB/s");
        }
        if let Some(v) = self.idle_kib_per_conn {
            let _ = write!(s, "{v:.1} KiB per connection per sidecar");
        }
        if let Some(v) = self.handshakes_per_s {
            let _ = write!(s, "{v:.0} handshakes/s");
        }
        s
    }
}

/// UTC now as `YYYYMMDDTHHMMSSZ`.
pub fn timestamp() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

const SCEN_LATENCY: [(&str, &str); 4] = [
    ("h1-c4", "HTTP/1.1, 4 conns"),
    ("h1-c16", "HTTP/1.1, 16 conns"),
    ("h1-c64", "HTTP/1.1, 64 conns"),
    ("h2-c4", "HTTP/2, 4 conns"),
];

fn run<'a>(s: &'a SystemResult, id: &str) -> Option<&'a RunResult> {
    s.runs.get(id).filter(|r| r.error.is_none())
}

fn mb(b: u64) -> String {
    format!("{:.1}", b as f64 / 1048576.0)
}

/// The Markdown table: one column per system.
pub fn markdown(rep: &Report) -> String {
    let direct = rep.systems.iter().find(|s| s.system == System::Direct);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Run {} ({}), {} cores, {} worker thread(s) per proxy, {:.0} s per fixed-rate run{}, load average {} before / {} after.\n",
        rep.started,
        if rep.smoke {
            "SMOKE: numbers mean nothing"
        } else {
            "full"
        },
        rep.cores,
        rep.threads,
        rep.duration_s,
        if rep.rounds > 1 {
            format!(
                " and median of {} interleaved rounds (systems in turn, a fresh pair each)",
                rep.rounds
            )
        } else {
            String::new()
        },
        rep.load_before,
        rep.load_after
    );
    if !rep.bulk_congestion.is_empty() {
        let _ = writeln!(
            md,
            "The TCP bulk sender's socket uses congestion control {}.\n",
            rep.bulk_congestion
        );
    }
    let _ = write!(md, "| figure |");
    for s in &rep.systems {
        let _ = write!(md, " {} |", s.system.name());
    }
    let _ = write!(md, "\n|---|");
    for _ in &rep.systems {
        let _ = write!(md, "---:|");
    }
    md.push('\n');
    let mut row = |label: String, f: &dyn Fn(&SystemResult) -> Option<String>| {
        let _ = write!(md, "| {label} |");
        for s in &rep.systems {
            let cell = if let Some(why) = &s.skipped {
                let _ = why;
                "skipped".to_owned()
            } else {
                f(s).unwrap_or_else(|| "-".to_owned())
            };
            let _ = write!(md, " {cell} |");
        }
        md.push('\n');
    };
    for (id, label) in SCEN_LATENCY {
        for (i, p) in ["p50", "p90", "p99", "p99.9"].iter().enumerate() {
            row(
                format!("{label} @1,000 rps: {p} latency ms (added over direct)"),
                &|s| {
                    let o = run(s, id)?.http.as_ref()?;
                    let v = o.latency_ms[i];
                    let base = direct
                        .and_then(|d| run(d, id))
                        .and_then(|r| r.http.as_ref());
                    Some(match base {
                        Some(b) if s.system != System::Direct => {
                            format!("{v:.3} ({:+.3})", v - b.latency_ms[i])
                        }
                        _ => format!("{v:.3}"),
                    })
                },
            );
        }
        row(
            format!("{label} @1,000 rps: CPU-s per 1,000 req, both proxies"),
            &|s| {
                run(s, id)?
                    .cpu_per_1k
                    .filter(|_| s.system != System::Direct)
                    .map(|v| format!("{v:.3}"))
            },
        );
    }
    row("RSS at 1,000 rps, client / server MB".into(), &|s| {
        (s.steady_rss.len() == 2)
            .then(|| format!("{} / {}", mb(s.steady_rss[0]), mb(s.steady_rss[1])))
    });
    row(
        "peak RSS (HTTP/1.1 scenarios), client / server MB".into(),
        &|s| {
            (s.peak_rss.len() == 2)
                .then(|| format!("{} / {}", mb(s.peak_rss[0]), mb(s.peak_rss[1])))
        },
    );
    row(
        "max requests/s (HTTP/1.1, 64 conns, closed loop)".into(),
        &|s| {
            run(s, "h1-max")?
                .http
                .as_ref()
                .map(|o| format!("{:.0}", o.rps))
        },
    );
    row(
        "CPU-s per 1,000 req at max rate, both proxies".into(),
        &|s| {
            run(s, "h1-max")?
                .cpu_per_1k
                .filter(|_| s.system != System::Direct)
                .map(|v| format!("{v:.3}"))
        },
    );
    row(
        "requests/s, new connection per request (4 conns)".into(),
        &|s| {
            run(s, "h1-newconn")?
                .http
                .as_ref()
                .map(|o| format!("{:.0}", o.rps))
        },
    );
    row("full mTLS handshakes/s (server sidecar)".into(), &|s| {
        run(s, "handshake")?
            .handshakes_per_s
            .map(|v| format!("{v:.0}"))
    });
    row("TCP bulk MB/s".into(), &|s| {
        run(s, "tcp-bulk")?.mb_per_s.map(|v| format!("{v:.0}"))
    });
    row(
        "RSS per idle mTLS connection per sidecar, KiB".into(),
        &|s| {
            let r = run(s, "idle")?;
            Some(format!(
                "{:.1} ({} conns)",
                r.idle_kib_per_conn?, r.idle_conns?
            ))
        },
    );
    row("start to ready, ms (median of starts)".into(), &|s| {
        let mut v = s.ready_ms.clone();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).map(|m| format!("{m:.0}"))
    });
    let failures: Vec<String> = rep
        .systems
        .iter()
        .flat_map(|s| {
            s.runs.iter().filter_map(move |(id, r)| {
                r.error
                    .as_ref()
                    .map(|e| format!("- {} {id}: {e}", s.system.name()))
            })
        })
        .chain(rep.systems.iter().filter_map(|s| {
            s.skipped
                .as_ref()
                .map(|w| format!("- {} skipped: {w}", s.system.name()))
        }))
        .collect();
    if !failures.is_empty() {
        md.push('\n');
        md.push_str(&failures.join("\n"));
        md.push('\n');
    }
    let _ = write!(md, "\nVersions: ");
    let v: Vec<String> = rep
        .versions
        .iter()
        .map(|(k, v)| format!("{k}: `{v}`"))
        .collect();
    md.push_str(&v.join("; "));
    md.push('\n');
    md
}

/// Writes `<stamp>.json/.md`, `latest.json/.md` and the SVG plots into `out`.
pub fn write(rep: &Report, out: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let json = serde_json::to_string_pretty(rep).map_err(|e| e.to_string())?;
    let md = markdown(rep);
    let prefix = if rep.smoke { "smoke-" } else { "" };
    let mut written = Vec::new();
    for (name, text) in [
        (format!("{prefix}{}.json", rep.started), &json),
        (format!("{prefix}{}.md", rep.started), &md),
        (format!("{prefix}latest.json"), &json),
        (format!("{prefix}latest.md"), &md),
    ] {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        written.push(p);
    }
    let lat = out.join(format!("{prefix}latency.svg"));
    plot_latency(rep, &lat).map_err(|e| format!("{}: {e}", lat.display()))?;
    written.push(lat);
    let cpu = out.join(format!("{prefix}cpu.svg"));
    plot_cpu(rep, &cpu).map_err(|e| format!("{}: {e}", cpu.display()))?;
    written.push(cpu);
    Ok(written)
}

const COLORS: [RGBColor; 4] = [
    RGBColor(120, 120, 120),
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
];

fn color(s: System) -> RGBColor {
    COLORS[System::ALL.iter().position(|x| *x == s).unwrap_or(0)]
}

type PlotResult = Result<(), Box<dyn std::error::Error>>;

/// Latency percentiles of `h1-c4` (1,000 rps, 4 connections), one line per system.
fn plot_latency(rep: &Report, path: &Path) -> PlotResult {
    let series: Vec<(System, [f64; 4])> = rep
        .systems
        .iter()
        .filter_map(|s| Some((s.system, run(s, "h1-c4")?.http.as_ref()?.latency_ms)))
        .collect();
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.1f64, f64::max);
    let min = series
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold(max, f64::min);
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Latency, HTTP/1.1 1 KiB, 1,000 rps over 4 connections",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..3.2f64, (min * 0.8..max * 1.5).log_scale())?;
    let labels = ["p50", "p90", "p99", "p99.9"];
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| {
            labels
                .get(x.round() as usize)
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
        .y_desc("ms (log scale)")
        .draw()?;
    for (sys, v) in &series {
        let c = color(*sys);
        chart
            .draw_series(LineSeries::new(
                v.iter().enumerate().map(|(i, y)| (i as f64, *y)),
                c.stroke_width(2),
            ))?
            .label(sys.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart.draw_series(
            v.iter()
                .enumerate()
                .map(|(i, y)| Circle::new((i as f64, *y), 3, c.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// CPU seconds per 1,000 requests (both proxies) per HTTP scenario, bars per system.
fn plot_cpu(rep: &Report, path: &Path) -> PlotResult {
    let scen = ["h1-c4", "h1-c16", "h1-c64", "h2-c4", "h1-max"];
    let systems: Vec<&SystemResult> = rep
        .systems
        .iter()
        .filter(|s| s.system != System::Direct && s.skipped.is_none())
        .collect();
    let val = |s: &SystemResult, id: &str| run(s, id).and_then(|r| r.cpu_per_1k).unwrap_or(0.0);
    let max = systems
        .iter()
        .flat_map(|s| scen.iter().map(|id| val(s, id)))
        .fold(0.01f64, f64::max);
    let root = SVGBackend::new(path, (720, 440)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "CPU seconds per 1,000 requests, both sidecars",
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..scen.len() as f64, 0f64..max * 1.15)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(scen.len() * 2 + 1)
        .x_label_formatter(&|x| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 0.05 && i >= 0.0 {
                scen.get(i as usize)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("CPU-s / 1,000 req")
        .draw()?;
    let n = systems.len().max(1) as f64;
    let w = 0.8 / n;
    for (k, s) in systems.iter().enumerate() {
        let c = color(s.system);
        chart
            .draw_series(scen.iter().enumerate().map(|(i, id)| {
                let x0 = i as f64 + 0.1 + k as f64 * w;
                Rectangle::new([(x0, 0.0), (x0 + w * 0.9, val(s, id))], c.filled())
            }))?
            .label(s.system.name())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
