//! `warden control`: the control plane (mesh CA on port 15012) and its administrative commands.
//! Thin: flags in, `warden_control` does the work. See `docs/control.md`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use time::OffsetDateTime;
use warden_control::admin::{self, RootOperation};
use warden_control::config::{DEFAULT_DNS_NAMES, DEFAULT_STATE_DIR, DEFAULT_TOKEN_AUDIENCE};
use warden_control::store::FileStore;
use warden_control::{CaSource, ControlConfig, ControlPlane, StatePaths};
use warden_identity::ca::RootInfo;
use warden_identity::keys::KeyAlgorithm;
use warden_identity::tools::{self, fmt_time};
use warden_identity::{Serial, SpiffeId, TrustDomain};
use warden_policy::jwt::k8s::SaTokenSpec;

/// `warden control`: run the control plane, or one of its administrative commands.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ControlArgs {
    #[command(subcommand)]
    command: Option<ControlCommand>,
    #[command(flatten)]
    run: RunArgs,
}

/// Administrative commands, run beside a control plane on the same state directory.
#[derive(Debug, Subcommand)]
enum ControlCommand {
    /// Print a service-account token signed with the state directory's token key, which the
    /// control plane accepts (for local meshes and tests).
    Token(TokenArgs),
    /// Revoke a certificate by serial, or an identity (all its certificates, and no new ones).
    Revoke(RevokeArgs),
    /// List revoked identities and serials.
    Revoked(RevokedArgs),
    /// Rotate the self-signed root: stage a new root, activate it, retire an old one.
    RotateRoot(RotateRootArgs),
    /// List the roots of the trust bundle (self-signed CA).
    Roots(RootsArgs),
    /// Show the proxies connected to a running control plane: identity, config version sent and
    /// ACKed, last NACK with its error, certificate expiry (like `istioctl proxy-status`).
    Status(crate::proxy_status::ProxyStatusArgs),
}

/// The state directory flag, shared by every command.
#[derive(Debug, Args)]
struct StateDirArg {
    /// State directory: ca/, token-signing-key.pem, token-jwks.json, root-cert.pem.
    #[arg(long, env = "WARDEN_CONTROL_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

/// The trust domain flag.
#[derive(Debug, Args)]
struct TrustDomainArg {
    /// Trust domain of the mesh.
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local", value_parser = parse_trust_domain)]
    trust_domain: TrustDomain,
}

fn parse_trust_domain(s: &str) -> Result<TrustDomain, String> {
    TrustDomain::new(s).map_err(|e| e.to_string())
}

fn parse_key(s: &str) -> Result<KeyAlgorithm, String> {
    s.parse()
        .map_err(|e: warden_identity::keys::KeyError| e.to_string())
}

/// A duration: `250ms`, or `24h`, `90d`, `30m`, `45s`, a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.trim().strip_suffix("ms") {
        Some(ms) => ms
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("invalid duration {s:?}: expected e.g. 250ms, 2s, 24h")),
        None => tools::parse_duration(s),
    }
}

/// Flags of `warden control` (running the control plane).
#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    state: StateDirArg,
    #[command(flatten)]
    trust_domain: TrustDomainArg,
    /// Address of the CA gRPC + HTTPS listener.
    #[arg(long, env = "WARDEN_CONTROL_LISTEN", default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Plugin CA directory (Istio's cacerts: ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem). Without it, a self-signed root kept in <state-dir>/ca is used.
    #[arg(long, env = "WARDEN_CONTROL_PLUGIN_CA")]
    plugin_ca: Option<PathBuf>,
    /// Key algorithm of a generated self-signed root: ec-p256, rsa-2048, rsa-3072, rsa-4096.
    #[arg(long, default_value = "ec-p256", value_parser = parse_key)]
    root_key: KeyAlgorithm,
    /// Workload certificate lifetime when a request asks for none.
    #[arg(long, env = "DEFAULT_WORKLOAD_CERT_TTL", default_value = "24h", value_parser = parse_duration)]
    default_ttl: Duration,
    /// Longest workload certificate lifetime a request may ask for.
    #[arg(long, env = "MAX_WORKLOAD_CERT_TTL", default_value = "90d", value_parser = parse_duration)]
    max_ttl: Duration,
    /// A service-account token issuer and the JWKS file of its keys, `ISSUER=FILE` (e.g.
    /// `https://kubernetes.default.svc.cluster.local=jwks.json` from a cluster's
    /// `kubectl get --raw /openid/v1/jwks`). Repeatable. A token claiming ISSUER is verified
    /// with FILE's keys only; tokens of other issuers with the state directory's own token key
    /// only. Re-read when it changes.
    #[arg(long = "token-jwks", value_name = "ISSUER=FILE")]
    token_jwks: Vec<warden_control::TokenIssuer>,
    /// Audience a service-account token must carry.
    #[arg(long, default_value = DEFAULT_TOKEN_AUDIENCE)]
    token_audience: String,
    /// When set, a request's `clusterid` metadata, if sent, must equal it.
    #[arg(long, env = "CLUSTER_ID")]
    cluster_id: Option<String>,
    /// DNS names of the serving certificate (repeatable; replaces the default list).
    #[arg(long = "dns-name", value_name = "NAME", default_values = DEFAULT_DNS_NAMES)]
    dns_names: Vec<String>,
    /// IP addresses of the serving certificate (repeatable; replaces the default list).
    #[arg(long = "ip-san", value_name = "IP", default_values = ["127.0.0.1", "::1"])]
    ip_sans: Vec<IpAddr>,
    /// Lifetime of the serving certificate (renewed at half of it).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    serving_ttl: Duration,
    /// How often revocations, CA files and token JWKS files are re-read.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    reload_interval: Duration,
    /// How long open connections get to finish on shutdown.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Directory of Istio YAML (AuthorizationPolicy, PeerAuthentication, RequestAuthentication,
    /// ServiceEntry, WorkloadEntry, ...) pushed to proxies over the same listener. Watched: a
    /// file that fails validation is reported and its last good version stays in force.
    #[arg(long, env = "WARDEN_CONFIG_DIR", value_name = "DIR")]
    config_dir: Option<PathBuf>,
    /// MeshConfig file (trustDomain, rootNamespace, outboundTrafficPolicy,
    /// extensionProviders); Istio's defaults without it. Watched like the config directory.
    #[arg(
        long,
        env = "WARDEN_MESH_CONFIG",
        value_name = "FILE",
        requires = "config_dir"
    )]
    mesh_config: Option<PathBuf>,
    /// How often the config directory and the MeshConfig file are checked for changes.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    config_poll: Duration,
    /// Where `warden control status` reads the connected proxies (HTTP, unauthenticated: keep
    /// it on loopback). Served only with --config-dir.
    #[arg(
        long,
        env = "WARDEN_CONTROL_DEBUG_ADDR",
        default_value = "127.0.0.1:15014"
    )]
    debug_addr: SocketAddr,
}

/// Flags of `warden control token`.
#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    state: StateDirArg,
    /// Kubernetes namespace of the workload.
    #[arg(long)]
    namespace: String,
    /// Service account of the workload.
    #[arg(long)]
    service_account: String,
    /// Audience (repeatable).
    #[arg(long = "audience", default_values = [DEFAULT_TOKEN_AUDIENCE])]
    audiences: Vec<String>,
    /// Token lifetime.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    ttl: Duration,
    /// Issuer (`iss`).
    #[arg(long, default_value = warden_policy::jwt::k8s::DEFAULT_ISSUER)]
    issuer: String,
    /// Pod the token is bound to.
    #[arg(long)]
    pod: Option<String>,
}

/// Flags of `warden control revoke`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["serial", "identity"])))]
struct RevokeArgs {
    #[command(flatten)]
    state: StateDirArg,
    /// Serial of the certificate to revoke (hex, colons allowed).
    #[arg(long)]
    serial: Option<Serial>,
    /// SPIFFE ID to revoke: its certificates, and any new one.
    #[arg(long)]
    identity: Option<SpiffeId>,
    /// Lift an identity's revocation (its revoked certificates stay revoked).
    #[arg(long, requires = "identity")]
    undo: bool,
}

/// Flags of `warden control revoked`.
#[derive(Debug, Args)]
struct RevokedArgs {
    #[command(flatten)]
    state: StateDirArg,
    /// Print the revocation list as JSON.
    #[arg(long)]
    json: bool,
}

/// Flags of `warden control rotate-root`.
#[derive(Debug, Args)]
struct RotateRootArgs {
    #[command(subcommand)]
    step: RotateStep,
}

/// Steps of a root rotation (see docs/ca.md, "Root rotation").
#[derive(Debug, Subcommand)]
enum RotateStep {
    /// 1. Generate a new root and add it to the trust bundle; keep signing with the current
    ///    one. Wait until every workload has the new bundle before activating.
    Stage(RotateKeyArgs),
    /// 2. Sign with the staged root from now on; the previous root stays trusted.
    Activate(RotateCommonArgs),
    /// 3. Drop an earlier root from the trust bundle (after every certificate it issued has
    ///    expired), or cancel a staged root.
    Retire(RetireArgs),
    /// Stage and activate at once (single-node setups and tests).
    Now(RotateKeyArgs),
}

#[derive(Debug, Args)]
struct RotateCommonArgs {
    #[command(flatten)]
    state: StateDirArg,
    #[command(flatten)]
    trust_domain: TrustDomainArg,
}

#[derive(Debug, Args)]
struct RotateKeyArgs {
    #[command(flatten)]
    common: RotateCommonArgs,
    /// Key algorithm of the new root.
    #[arg(long, default_value = "ec-p256", value_parser = parse_key)]
    key: KeyAlgorithm,
}

#[derive(Debug, Args)]
struct RetireArgs {
    #[command(flatten)]
    common: RotateCommonArgs,
    /// Serial of the root to retire (see `warden control roots`).
    #[arg(long)]
    serial: Serial,
}

/// Flags of `warden control roots`.
#[derive(Debug, Args)]
struct RootsArgs {
    #[command(flatten)]
    state: StateDirArg,
    #[command(flatten)]
    trust_domain: TrustDomainArg,
}

/// Runs `warden control` or one of its subcommands.
pub fn run(args: ControlArgs) -> anyhow::Result<()> {
    match args.command {
        None => serve(args.run),
        Some(ControlCommand::Token(a)) => token(a),
        Some(ControlCommand::Revoke(a)) => revoke(a),
        Some(ControlCommand::Revoked(a)) => revoked(a),
        Some(ControlCommand::RotateRoot(a)) => rotate_root(a),
        Some(ControlCommand::Status(a)) => crate::proxy_status::run(a),
        Some(ControlCommand::Roots(a)) => {
            let roots = admin::roots(&a.state.state_dir, &a.trust_domain.trust_domain)
                .context("warden control roots")?;
            print_roots(&roots);
            Ok(())
        }
    }
}

fn serve(a: RunArgs) -> anyhow::Result<()> {
    let mut config = ControlConfig::new(a.state.state_dir);
    config.listen = a.listen;
    config.trust_domain = a.trust_domain.trust_domain;
    config.ca = match a.plugin_ca {
        Some(dir) => CaSource::Plugin { dir },
        None => CaSource::SelfSigned {
            root_key: a.root_key,
        },
    };
    config.default_ttl = a.default_ttl;
    config.max_ttl = a.max_ttl;
    config.token_jwks = a.token_jwks;
    config.token_audience = a.token_audience;
    config.cluster_id = a.cluster_id;
    config.dns_names = a.dns_names;
    config.ip_sans = a.ip_sans;
    config.serving_ttl = a.serving_ttl;
    config.reload_interval = a.reload_interval;
    config.drain_timeout = a.drain_timeout;
    config.debug_listen = Some(a.debug_addr);
    if config.default_ttl > config.max_ttl {
        anyhow::bail!(
            "--default-ttl {:?} is longer than --max-ttl {:?}",
            config.default_ttl,
            config.max_ttl
        );
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warden-control")
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(async move {
        let store = match a.config_dir {
            Some(dir) => {
                let trust_domain = config.trust_domain.clone();
                let store = tokio::task::spawn_blocking(move || {
                    open_store(dir, a.mesh_config, &trust_domain)
                })
                .await
                .context("loading the config directory")??;
                Some(Arc::new(store))
            }
            None => None,
        };
        let mut cp = tokio::task::spawn_blocking(move || ControlPlane::open(config))
            .await
            .context("loading the control plane state")?
            .context("warden control")?;
        if let Some(store) = &store {
            cp = cp.with_config_source(store.as_ref());
        }
        let running = cp.start().await.context("warden control")?;
        let watcher = store.map(|s| s.watch(a.config_poll));
        wait_for_signal().await?;
        if let Some(w) = watcher {
            w.abort();
        }
        running.shutdown().await;
        Ok(())
    })
}

/// Loads the config directory and MeshConfig. Invalid files are logged with their exact error
/// (and stay out until fixed); a MeshConfig for another trust domain than the CA's is refused.
fn open_store(
    dir: PathBuf,
    mesh_file: Option<PathBuf>,
    trust_domain: &TrustDomain,
) -> anyhow::Result<FileStore> {
    let store = FileStore::open(&dir, mesh_file.clone()).context("warden control --config-dir")?;
    let snap = store.current();
    if let Some(file) = &mesh_file
        && snap.mesh.trust_domain != trust_domain.as_str()
    {
        anyhow::bail!(
            "--mesh-config {}: trustDomain {:?} differs from --trust-domain {:?}; the CA issues identities in --trust-domain, so set both to the same value",
            file.display(),
            snap.mesh.trust_domain,
            trust_domain.as_str()
        );
    }
    tracing::info!(
        dir = %dir.display(),
        version = snap.version,
        security = snap.security.len(),
        networking = snap.networking.len(),
        invalid = snap.errors.len(),
        "config loaded; pushed to proxies on the CA listener"
    );
    Ok(store)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        r = tokio::signal::ctrl_c() => {
            r.context("installing the Ctrl-C handler")?;
            tracing::info!("interrupted: shutting down");
        }
    }
    Ok(())
}

fn token(a: TokenArgs) -> anyhow::Result<()> {
    let spec = SaTokenSpec {
        audiences: a.audiences,
        ttl: a.ttl,
        issuer: a.issuer,
        pod: a.pod,
        ..SaTokenSpec::new(a.namespace, a.service_account)
    };
    let paths = StatePaths::new(&a.state.state_dir);
    let token = warden_control::token_key::mint_token(&paths, &spec, SystemTime::now())
        .context("warden control token")?;
    println!("{token}");
    Ok(())
}

const PICKUP: &str = "a running control plane on this state directory applies it within its reload interval (2s by default)";

fn revoke(a: RevokeArgs) -> anyhow::Result<()> {
    let dir = &a.state.state_dir;
    match (a.serial, a.identity) {
        (Some(serial), None) => {
            if admin::revoke_serial(dir, &serial).context("warden control revoke")? {
                println!("revoked certificate {serial}; {PICKUP}");
            } else {
                println!("certificate {serial} was already revoked");
            }
        }
        (None, Some(identity)) if a.undo => {
            if admin::unrevoke_identity(dir, &identity).context("warden control revoke --undo")? {
                println!(
                    "{identity} may get certificates again (its revoked certificates stay revoked); {PICKUP}"
                );
            } else {
                println!("{identity} was not revoked");
            }
        }
        (None, Some(identity)) => {
            let serials =
                admin::revoke_identity(dir, &identity).context("warden control revoke")?;
            println!(
                "revoked {identity} and {} unexpired certificate(s) of it; {PICKUP}",
                serials.len()
            );
            for s in serials {
                println!("  {s}");
            }
        }
        // clap's argument group makes exactly one of them present.
        _ => anyhow::bail!("give exactly one of --serial and --identity"),
    }
    Ok(())
}

fn unix(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t).map_or_else(|_| t.to_string(), fmt_time)
}

fn revoked(a: RevokedArgs) -> anyhow::Result<()> {
    let list = admin::revoked(&a.state.state_dir).context("warden control revoked")?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!("revoked identities: {}", list.identities.len());
    for i in &list.identities {
        println!("  {}  since {}", i.identity, unix(i.revoked_at));
    }
    println!("revoked certificates: {}", list.serials.len());
    for s in &list.serials {
        let identity = s
            .identity
            .as_ref()
            .map_or_else(|| "(unknown identity)".to_owned(), ToString::to_string);
        let expires = s.not_after.map_or_else(|| "unknown".to_owned(), unix);
        println!(
            "  {}  {identity}  since {}  expires {expires}",
            s.serial,
            unix(s.revoked_at)
        );
    }
    println!("last CRL number: {}", list.crl_number);
    Ok(())
}

fn rotate_root(a: RotateRootArgs) -> anyhow::Result<()> {
    let (common, op) = match a.step {
        RotateStep::Stage(k) => (k.common, RootOperation::Stage(k.key)),
        RotateStep::Activate(c) => (c, RootOperation::Activate),
        RotateStep::Retire(r) => (r.common, RootOperation::Retire(r.serial)),
        RotateStep::Now(k) => (k.common, RootOperation::Rotate(k.key)),
    };
    let (root, roots) = admin::root_operation(
        &common.state.state_dir,
        &common.trust_domain.trust_domain,
        &op,
    )
    .context("warden control rotate-root")?;
    match (&op, root) {
        (RootOperation::Stage(_), Some(r)) => println!(
            "staged root {} (trusted, not signing yet); activate once every workload has the new bundle",
            r.serial
        ),
        (RootOperation::Retire(s), _) => println!("retired root {s}"),
        (_, Some(r)) => println!("root {} now signs", r.serial),
        (_, None) => {}
    }
    println!("{PICKUP}");
    print_roots(&roots);
    Ok(())
}

fn print_roots(roots: &[RootInfo]) {
    for r in roots {
        println!(
            "{:<8} {}  {}  {}  until {}  sha256 {}",
            format!("{:?}", r.status).to_lowercase(),
            r.serial,
            r.key,
            r.subject,
            fmt_time(r.not_after),
            r.sha256_fingerprint
        );
    }
}
