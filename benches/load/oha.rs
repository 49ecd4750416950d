//! HTTP load with `oha` (crates.io): open loop at a fixed rate with latency correction
//! (coordinated omission accounted for), or closed loop for the maximum rate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One oha run's settings.
#[derive(Debug, Clone)]
pub struct Load {
    /// Concurrent connections.
    pub connections: usize,
    /// Requests per second over all connections; None: as fast as possible (closed loop).
    pub rate: Option<u32>,
    /// HTTP/2 with prior knowledge (one stream per connection at a time).
    pub http2: bool,
    /// A new connection per request.
    pub new_connection: bool,
    /// How long.
    pub duration: Duration,
}

/// What oha measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// Responses with status 200.
    pub ok: u64,
    /// Responses with another status, and transport errors.
    pub failed: u64,
    /// Requests per second achieved.
    pub rps: f64,
    /// Latency percentiles in milliseconds: p50, p90, p99, p99.9.
    pub latency_ms: [f64; 4],
}

/// Finds oha (`OHA_BIN`, `PATH`, or `tools/oha/bin/oha`), or installs it there with
/// `cargo install oha --locked`.
pub fn ensure_oha(tools: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("OHA_BIN") {
        return Ok(PathBuf::from(p));
    }
    let local = tools.join("oha").join("bin").join("oha");
    for cand in [PathBuf::from("oha"), local.clone()] {
        if Command::new(&cand)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
        {
            return Ok(cand);
        }
    }
    eprintln!(
        "installing oha: cargo install oha --locked --root {}",
        tools.join("oha").display()
    );
    let st = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["install", "oha", "--locked", "--quiet", "--root"])
        .arg(tools.join("oha"))
        .status()
        .map_err(|e| format!("cargo install oha: {e}"))?;
    if st.success() {
        Ok(local)
    } else {
        Err(format!("cargo install oha failed: {st}"))
    }
}

/// Runs oha against `http://<entry>/` and parses its JSON summary.
pub fn run(oha: &Path, entry: SocketAddr, load: &Load) -> Result<Outcome, String> {
    let mut cmd = Command::new(oha);
    cmd.args(["--no-tui", "--output-format", "json", "-c"])
        .arg(load.connections.to_string())
        .arg("-z")
        .arg(format!("{}ms", load.duration.as_millis()))
        .args(["-t", "10s"]);
    if let Some(rate) = load.rate {
        cmd.arg("-q")
            .arg(rate.to_string())
            .arg("--latency-correction");
    }
    if load.http2 {
        cmd.arg("--http2");
    }
    if load.new_connection {
        cmd.arg("--disable-keepalive");
    }
    cmd.arg(format!("http://{entry}/"));
    let out = cmd
        .output()
        .map_err(|e| format!("{}: {e}", oha.display()))?;
    if !out.status.success() {
        return Err(format!(
            "oha failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    parse(&out.stdout)
}

/// Parses oha's `--output-format json` summary.
pub fn parse(json: &[u8]) -> Result<Outcome, String> {
    let v: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("oha output is not JSON: {e}"))?;
    let num = |p: &str| v.pointer(p).and_then(serde_json::Value::as_f64);
    let mut ok = 0;
    let mut failed = 0;
    if let Some(codes) = v.get("statusCodeDistribution").and_then(|c| c.as_object()) {
        for (code, n) in codes {
            let n = n.as_u64().unwrap_or(0);
            if code == "200" { ok += n } else { failed += n }
        }
    }
    if let Some(errs) = v.get("errorDistribution").and_then(|c| c.as_object()) {
        for (err, n) in errs {
            // Requests cut off by the end of the run are not failures.
            if !err.contains("deadline") {
                failed += n.as_u64().unwrap_or(0);
            }
        }
    }
    let pct = |k: &str| num(&format!("/latencyPercentiles/{k}")).unwrap_or(f64::NAN) * 1e3;
    Ok(Outcome {
        ok,
        failed,
        rps: ok as f64 / num("/summary/total").ok_or("oha JSON without summary.total")?,
        latency_ms: [pct("p50"), pct("p90"), pct("p99"), pct("p99.9")],
    })
}
