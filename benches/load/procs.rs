//! Child processes (proxies, the upstream) and what `/proc` says about them.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux).
fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A process the harness started; killed (by its pid) when dropped.
#[derive(Debug)]
pub struct Proc {
    /// A short name for messages (`warden-client`).
    pub name: String,
    child: Child,
    /// When it was spawned.
    pub started: Instant,
}

/// CPU time and memory of a process at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// utime + stime, seconds.
    pub cpu: f64,
    /// VmRSS, bytes.
    pub rss: u64,
    /// VmHWM (peak RSS), bytes.
    pub hwm: u64,
}

impl Proc {
    /// Spawns `cmd` with stdout/stderr to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, String> {
        let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let started = Instant::now();
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            started,
        })
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err if it already exited.
    pub fn alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(st)) => Err(format!("{} exited: {st}", self.name)),
            Err(e) => Err(format!("{}: {e}", self.name)),
        }
    }

    /// CPU and memory now.
    pub fn sample(&self) -> Sample {
        sample(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU and memory of `pid` (zeros if it is gone).
pub fn sample(pid: u32) -> Sample {
    let mut s = Sample::default();
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may hold spaces) start at field 3 (state).
        if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime is field 14, stime 15 (1-based): 11 and 12 here.
            s.cpu = (ticks(11) + ticks(12)) / clk_tck();
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        for line in status.lines() {
            let kib = |l: &str| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
                    * 1024
            };
            if line.starts_with("VmRSS:") {
                s.rss = kib(line);
            } else if line.starts_with("VmHWM:") {
                s.hwm = kib(line);
            }
        }
    }
    s
}

/// Waits until `GET http://addr/path` answers 200; returns the time since `since`.
pub fn wait_http_ok(
    p: &mut Proc,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<Duration, String> {
    let deadline = Instant::now() + timeout;
    loop {
        p.alive()?;
        if http_status(addr, path) == Some(200) {
            return Ok(p.started.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} not ready at http://{addr}{path} after {timeout:?}",
                p.name
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until `addr` accepts TCP connections.
pub fn wait_listening(
    p: &mut Proc,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Duration, String> {
    let deadline = Instant::now() + timeout;
    loop {
        p.alive()?;
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            return Ok(p.started.elapsed());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} not listening on {addr} after {timeout:?}",
                p.name
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A blocking one-shot HTTP/1.1 GET (Envoy refuses HTTP/1.0); the status code, or None.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace().nth(1)?.parse().ok()
}
