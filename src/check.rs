//! `warden check`: evaluate Istio security policy for one workload and one request, and explain
//! the decision (which policy and rule decided, why, and what every applicable policy did).
//!
//! Exit code: 0 allow, 1 deny, 2 configuration error (the decision is still printed).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use clap::Args;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde_json::{Value, json};
use warden_policy::{
    ConnectionContext, ExtAuthzDenial, ExtAuthzError, ExtAuthzVerdict, HttpRequest, MtlsPolicy,
    PathNormalization, PolicySet, PolicySetOptions, PolicyTrace, Reason, Request, RequestAuth,
    RuleOutcome, Verdict, WorkloadRef, load_path, normalize_path,
};

/// Flags of `warden check`.
#[derive(Debug, Args)]
#[command(
    about = "Explain what Istio security policy decides for a workload and a request",
    long_about = "Loads Istio AuthorizationPolicy, PeerAuthentication and RequestAuthentication \
                  YAML, compiles what applies to one workload and evaluates one request or TCP \
                  connection. Prints the decision, the policy and rule that decided and why, \
                  every applicable policy rule by rule, AUDIT and dry-run outcomes, and the \
                  PeerAuthentication mode of the port.\n\nExit code: 0 allow, 1 deny, 2 \
                  configuration error.",
    after_help = "Examples:\n  warden check --policies ./policies -n foo -l app=httpbin \\\n      \
                  --principal cluster.local/ns/bar/sa/sleep --method POST --path /admin\n  \
                  warden check --policies ./policies -n foo -l app=db --tcp --port 5432\n  \
                  warden check --policies ./policies -n foo --request-principal https://idp/alice \\\n      \
                  --claim groups='[\"admins\"]' --header 'x-token: abc' --json"
)]
pub struct CheckArgs {
    /// A YAML file or a directory of `.yaml`/`.yml` files (searched recursively).
    #[arg(long, short = 'p', value_name = "PATH")]
    policies: PathBuf,
    /// The mesh root namespace: its policies apply to every namespace.
    #[arg(long, value_name = "NAMESPACE", default_value = warden_policy::DEFAULT_ROOT_NAMESPACE)]
    root_namespace: String,

    /// The workload's namespace.
    #[arg(
        long,
        short = 'n',
        value_name = "NAMESPACE",
        default_value = "default",
        help_heading = "Workload"
    )]
    namespace: String,
    /// A workload label (repeatable).
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = key_value, help_heading = "Workload")]
    labels: Vec<(String, String)>,

    /// The peer's SPIFFE identity from its mTLS certificate (`spiffe://` optional); omit for plaintext.
    #[arg(long, value_name = "ID", help_heading = "Connection")]
    principal: Option<String>,
    /// The direct peer address (`source.ip`, `ipBlocks`).
    #[arg(
        long,
        value_name = "IP",
        default_value = "10.0.0.1",
        help_heading = "Connection"
    )]
    source_ip: IpAddr,
    /// The original client address (`remote.ip`, `remoteIpBlocks`); defaults to --source-ip.
    #[arg(long, value_name = "IP", help_heading = "Connection")]
    remote_ip: Option<IpAddr>,
    /// The destination address (`destination.ip`).
    #[arg(
        long,
        value_name = "IP",
        default_value = "10.0.0.2",
        help_heading = "Connection"
    )]
    destination_ip: IpAddr,
    /// The workload port (`ports`, `destination.port`, `portLevelMtls`).
    #[arg(
        long,
        value_name = "PORT",
        default_value_t = 8080,
        help_heading = "Connection"
    )]
    port: u16,
    /// The TLS SNI (`connection.sni`).
    #[arg(long, value_name = "NAME", help_heading = "Connection")]
    sni: Option<String>,
    /// Evaluate a TCP connection instead of an HTTP request (Istio's HTTP-only rule applies).
    #[arg(long, help_heading = "Connection", conflicts_with_all = ["method", "path", "host", "headers", "request_principal", "claims", "claims_json", "jwt"])]
    tcp: bool,

    /// The HTTP method.
    #[arg(
        long,
        short = 'X',
        value_name = "METHOD",
        default_value = "GET",
        help_heading = "HTTP request"
    )]
    method: String,
    /// The request path as sent (query allowed); normalized before matching.
    #[arg(
        long,
        value_name = "PATH",
        default_value = "/",
        help_heading = "HTTP request"
    )]
    path: String,
    /// The Host / :authority; defaults to DESTINATION_IP:PORT.
    #[arg(long, value_name = "HOST", help_heading = "HTTP request")]
    host: Option<String>,
    /// A request header (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE", value_parser = header, help_heading = "HTTP request")]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Istio's path normalization.
    #[arg(long, value_name = "MODE", default_value = "base", value_parser = normalization, help_heading = "HTTP request")]
    path_normalization: PathNormalization,

    /// A JWT sent as `Authorization: Bearer TOKEN`, validated with the workload's
    /// RequestAuthentication rules (inline `jwks`) exactly as the sidecar does: an invalid token is
    /// denied with 401 (403 for a disallowed audience) before authorization; a valid one gives the
    /// request principal and claims. Tokens in --header or the --path query are validated too.
    #[arg(long, value_name = "TOKEN", help_heading = "HTTP request")]
    jwt: Option<String>,

    /// The request principal `ISS/SUB` of an already validated JWT (sets the `iss` and `sub` claims).
    #[arg(long, value_name = "ISS/SUB", help_heading = "Validated JWT")]
    request_principal: Option<String>,
    /// A top-level JWT claim (repeatable); VALUE is JSON if it parses as JSON, else a string.
    #[arg(long = "claim", value_name = "NAME=VALUE", value_parser = key_value, help_heading = "Validated JWT")]
    claims: Vec<(String, String)>,
    /// The whole JWT payload as a JSON object (combined with --claim and --request-principal).
    #[arg(long, value_name = "JSON", help_heading = "Validated JWT")]
    claims_json: Option<String>,

    /// What the ext-authz provider of a matching CUSTOM policy answers (no provider is called).
    #[arg(long, value_name = "ANSWER", default_value = "allow", value_parser = ["allow", "deny", "error"], help_heading = "Output")]
    ext_authz: String,
    /// Print JSON instead of text.
    #[arg(long, help_heading = "Output")]
    json: bool,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

fn header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("expected \"NAME: VALUE\", got {s:?}"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("invalid header name {:?}", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("invalid header value {:?}", value.trim()))?;
    Ok((name, value))
}

fn normalization(s: &str) -> Result<PathNormalization, String> {
    PathNormalization::parse(s).ok_or_else(|| {
        format!(
            "unknown mode {s:?}: expected none, base, merge-slashes or decode-and-merge-slashes"
        )
    })
}

/// The JWT payload from the flags, if any flag sets one.
fn claims(args: &CheckArgs) -> Result<Option<Value>, String> {
    let mut payload = match &args.claims_json {
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(v @ Value::Object(_)) => v,
            Ok(_) => return Err("--claims-json must be a JSON object".into()),
            Err(e) => return Err(format!("--claims-json: {e}")),
        },
        None if args.request_principal.is_none() && args.claims.is_empty() => return Ok(None),
        None => json!({}),
    };
    if let Some(rp) = &args.request_principal {
        // Istio splits a request principal at the last `/` (issuers are often URLs).
        let (iss, sub) = rp
            .rsplit_once('/')
            .ok_or_else(|| format!("--request-principal {rp:?}: expected ISS/SUB"))?;
        payload["iss"] = json!(iss);
        payload["sub"] = json!(sub);
    }
    for (k, v) in &args.claims {
        let value = match serde_json::from_str::<Value>(v) {
            Ok(j @ (Value::Array(_) | Value::Object(_) | Value::Number(_) | Value::Bool(_))) => j,
            _ => Value::String(v.clone()),
        };
        payload[k.as_str()] = value;
    }
    Ok(Some(payload))
}

/// What RequestAuthentication made of the request's token.
enum JwtResult {
    /// No token, or no RequestAuthentication applies.
    None,
    /// A valid token: its payload.
    Valid(Value),
    /// A present but invalid token: the status (401, or 403 for the audience) and why.
    Failed(u16, String),
}

/// Validates the request's token (from --jwt, --header or the --path query) with the workload's
/// RequestAuthentication rules, as the sidecar does.
fn authenticate_jwt(
    args: &CheckArgs,
    rules: &[warden_policy::scope::AppliedJwtRule],
    headers: &HeaderMap,
) -> Result<JwtResult, String> {
    use warden_policy::jwt::{JwtAuthenticator, JwtConfig, SimpleRequest};
    if rules.is_empty() {
        if args.jwt.is_some() {
            return Err(
                "--jwt: no RequestAuthentication applies to this workload, so the token would \
                 not be validated (use --claim/--request-principal to simulate a validated token)"
                    .into(),
            );
        }
        return Ok(JwtResult::None);
    }
    let jwt_rules: Vec<_> = rules.iter().map(|r| r.rule().clone()).collect();
    let authenticator = JwtAuthenticator::compile(&jwt_rules, JwtConfig::default())
        .map_err(|e| format!("RequestAuthentication: {e}"))?;
    let mut request = SimpleRequest::new(args.method.clone());
    for (name, value) in headers {
        request.headers.push((
            name.as_str().to_owned(),
            String::from_utf8_lossy(value.as_bytes()).into_owned(),
        ));
    }
    request.query = args.path.split_once('?').map(|(_, q)| q.to_owned());
    Ok(
        match authenticator.authenticate(&request, std::time::SystemTime::now()) {
            Ok(Some(outcome)) => JwtResult::Valid(outcome.claims),
            Ok(None) => JwtResult::None,
            Err(failure) => JwtResult::Failed(failure.status_code(), failure.to_string()),
        },
    )
}

#[derive(Serialize)]
struct Deciding {
    policy: String,
    rule: usize,
    action: String,
}

#[derive(Serialize)]
struct MtlsReport {
    port: u16,
    mode: MtlsPolicy,
    source: String,
}

#[derive(Serialize)]
struct DryRunReport {
    would_be: Verdict,
    deny: Option<String>,
    allow: Option<String>,
}

#[derive(Serialize)]
struct Report {
    decision: Verdict,
    http_status: Option<u16>,
    reason: String,
    deciding: Option<Deciding>,
    workload: Value,
    request: Value,
    mtls: MtlsReport,
    audit: Option<String>,
    dry_run: Option<DryRunReport>,
    policies: Vec<PolicyTrace>,
    request_authentications: Vec<String>,
    errors: Vec<String>,
    warnings: Vec<String>,
}

/// Runs `warden check`; returns the process exit code.
pub fn run(args: CheckArgs) -> i32 {
    match execute(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("warden check: {message}");
            2
        }
    }
}

fn execute(args: &CheckArgs) -> Result<i32, String> {
    let loaded = load_path(&args.policies).map_err(|e| e.to_string())?;
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    let warnings: Vec<String> = loaded.warnings().map(ToString::to_string).collect();
    let set = PolicySet::new(
        loaded.resources(),
        &PolicySetOptions {
            root_namespace: args.root_namespace.clone(),
        },
    );
    let labels: BTreeMap<String, String> = args.labels.iter().cloned().collect();
    let compiled = set.compile_for(&WorkloadRef {
        namespace: &args.namespace,
        labels: &labels,
    });

    let payload = claims(args)?;
    let mut headers = HeaderMap::new();
    for (name, value) in &args.headers {
        headers.append(name.clone(), value.clone());
    }
    if let Some(token) = &args.jwt {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "--jwt: the token is not a valid header value".to_string())?;
        headers.append(http::header::AUTHORIZATION, value);
    }
    let jwt = if args.tcp {
        JwtResult::None
    } else {
        authenticate_jwt(args, &compiled.jwt_rules, &headers)?
    };
    let payload = match (&jwt, payload) {
        // Claims given with flags add to (and override) those of a validated token.
        (JwtResult::Valid(claims), Some(Value::Object(extra))) => {
            let mut merged = claims.clone();
            for (k, v) in extra {
                merged[k.as_str()] = v;
            }
            Some(merged)
        }
        (JwtResult::Valid(claims), _) => Some(claims.clone()),
        (_, p) => p,
    };
    let host = args
        .host
        .clone()
        .unwrap_or_else(|| match args.destination_ip {
            IpAddr::V4(ip) => format!("{ip}:{}", args.port),
            IpAddr::V6(ip) => format!("[{ip}]:{}", args.port),
        });
    let normalized = if args.tcp {
        None
    } else {
        Some(normalize_path(&args.path, args.path_normalization))
    };

    let (mode, mode_source) = compiled.peer_authentication.explain_port(args.port);
    let mtls = MtlsReport {
        port: args.port,
        mode,
        source: mode_source.to_string(),
    };
    let workload = json!({"namespace": args.namespace, "labels": labels});
    let mut request_json = json!({
        "protocol": if args.tcp { "TCP" } else { "HTTP" },
        "principal": args.principal,
        "source_ip": args.source_ip.to_string(),
        "remote_ip": args.remote_ip.unwrap_or(args.source_ip).to_string(),
        "destination_ip": args.destination_ip.to_string(),
        "port": args.port,
        "sni": args.sni,
    });
    if !args.tcp {
        request_json["method"] = json!(args.method);
        request_json["path"] = json!(args.path);
        request_json["host"] = json!(host);
        request_json["headers"] = json!(
            args.headers
                .iter()
                .map(|(n, v)| format!("{}: {}", n, String::from_utf8_lossy(v.as_bytes())))
                .collect::<Vec<_>>()
        );
        request_json["jwt_claims"] = payload.clone().unwrap_or(Value::Null);
        if let Some(Ok(p)) = &normalized {
            request_json["normalized_path"] = json!(p);
        }
    }

    let mut report = Report {
        decision: Verdict::Allow,
        http_status: None,
        reason: String::new(),
        deciding: None,
        workload,
        request: request_json,
        mtls,
        audit: None,
        dry_run: None,
        policies: Vec::new(),
        request_authentications: compiled
            .request_authentications
            .iter()
            .map(ToString::to_string)
            .collect(),
        errors,
        warnings,
    };

    let rejection = match (&normalized, mode, &args.principal) {
        (Some(Err(e)), _, _) => Some((
            Some(e.http_status()),
            format!("rejected before authorization: {e}"),
        )),
        (_, MtlsPolicy::Strict, None) => Some((
            None,
            format!(
                "rejected before authorization: PeerAuthentication is STRICT on port {} ({}) and the connection is plaintext (no --principal)",
                args.port, report.mtls.source
            ),
        )),
        _ => match &jwt {
            JwtResult::Failed(status, why) => Some((
                Some(*status),
                format!("rejected before authorization by RequestAuthentication: {why}"),
            )),
            _ => None,
        },
    };

    let path = match &normalized {
        Some(Ok(p)) => p.clone(),
        _ => String::new(),
    };
    let mut conn = ConnectionContext::new(args.source_ip, args.destination_ip, args.port);
    conn.peer_principal = args.principal.as_deref();
    conn.remote_ip = args.remote_ip.unwrap_or(args.source_ip);
    conn.sni = args.sni.as_deref();
    let request = if args.tcp {
        Request::tcp(conn)
    } else {
        Request::http(
            conn,
            HttpRequest {
                method: &args.method,
                host: &host,
                path: &path,
                headers: &headers,
                auth: payload.as_ref().map(RequestAuth::new),
            },
        )
    };
    let answer = args.ext_authz.as_str();
    let ext = |provider: &str, _: &Request<'_>| match answer {
        "deny" => Ok(ExtAuthzVerdict::Deny(ExtAuthzDenial::forbidden(
            "--ext-authz deny",
        ))),
        "error" => Err(ExtAuthzError::Unavailable {
            provider: provider.to_owned(),
            reason: "--ext-authz error".to_owned(),
        }),
        _ => Ok(ExtAuthzVerdict::Allow),
    };
    let decision = compiled.authz.evaluate(&request, &ext);
    report.policies = compiled.authz.trace(&request);
    report.audit = decision.audit.map(|m| m.to_string());
    report.dry_run = decision.dry_run.map(|d| DryRunReport {
        would_be: d.would_be,
        deny: d.deny.map(|m| m.to_string()),
        allow: d.allow.map(|m| m.to_string()),
    });
    match rejection {
        Some((status, why)) => {
            report.decision = Verdict::Deny;
            report.http_status = status;
            report.reason = why;
        }
        None => {
            report.decision = decision.verdict;
            report.http_status =
                (decision.verdict == Verdict::Deny && !args.tcp).then(|| decision.http_status());
            report.reason = decision.to_string();
            report.deciding = decision.deciding_rule().map(|m| Deciding {
                policy: m.policy().to_string(),
                rule: m.rule_index(),
                action: m.action().to_string(),
            });
            if let Reason::CustomDenied { .. } | Reason::CustomFailed { .. } = decision.reason {
                report.reason.push_str(" (simulated with --ext-authz)");
            }
        }
    }

    let text = if args.json {
        let mut j = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        j.push('\n');
        j
    } else {
        render(args, &report, &path, &host)
    };
    // A closed pipe (`warden check ... | head`) is not an error worth a panic.
    let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
    Ok(if !report.errors.is_empty() {
        2
    } else if report.decision == Verdict::Allow {
        0
    } else {
        1
    })
}

/// Column-aligned text report.
fn render(args: &CheckArgs, r: &Report, path: &str, host: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let mut line = |label: &str, text: &str| {
        let _ = writeln!(out, "{:<10} {}", label, text);
    };
    let labels = if args.labels.is_empty() {
        "(none)".to_owned()
    } else {
        args.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    line(
        "Workload",
        &format!("namespace {}, labels {labels}", args.namespace),
    );
    let peer = args
        .principal
        .as_deref()
        .map_or("plaintext (no peer identity)".to_owned(), |p| {
            format!("peer {p}")
        });
    if args.tcp {
        line("Request", &format!("TCP connection to port {}", args.port));
    } else {
        let shown = if path != args.path && !path.is_empty() {
            format!(
                "{} (normalized {}: {})",
                args.path, args.path_normalization, path
            )
        } else {
            args.path.clone()
        };
        line(
            "Request",
            &format!(
                "HTTP {} {shown}, host {host}, port {}",
                args.method, args.port
            ),
        );
    }
    line(
        "",
        &format!(
            "{peer}, source {}{}",
            args.source_ip,
            args.remote_ip
                .map(|ip| format!(", remote {ip}"))
                .unwrap_or_default()
        ),
    );
    line(
        "mTLS",
        &format!(
            "{} on port {} ({})",
            r.mtls.mode, r.mtls.port, r.mtls.source
        ),
    );
    out.push('\n');
    let verdict = match (r.decision, r.http_status) {
        (Verdict::Allow, _) => "ALLOW".to_owned(),
        (Verdict::Deny, Some(s)) => format!("DENY (HTTP {s})"),
        (Verdict::Deny, None) => "DENY (connection closed)".to_owned(),
    };
    let mut line = |label: &str, text: &str| {
        let _ = writeln!(out, "{:<10} {}", label, text);
    };
    line("Decision", &verdict);
    line("", &r.reason);
    if let Some(a) = &r.audit {
        line("Audit", &format!("audited by {a}"));
    }
    if let Some(d) = &r.dry_run {
        let would = match d.would_be {
            Verdict::Allow => "ALLOW",
            Verdict::Deny => "DENY",
        };
        let by = match (&d.deny, &d.allow) {
            (Some(deny), _) => format!("dry-run {deny} matched"),
            (None, Some(allow)) => format!("dry-run {allow} matched"),
            (None, None) => "no dry-run rule matched".to_owned(),
        };
        let change = if d.would_be == r.decision {
            "no change"
        } else {
            "CHANGE"
        };
        line(
            "Dry-run",
            &format!("{change}: would {would} with dry-run policies enforced ({by})"),
        );
    }

    let _ = writeln!(
        out,
        "\nAuthorizationPolicies applied ({}):",
        r.policies.len()
    );
    if r.policies.is_empty() {
        let _ = writeln!(out, "  none: every request is allowed");
    }
    let width = r
        .policies
        .iter()
        .map(|p| p.policy.to_string().len())
        .max()
        .unwrap_or(0);
    for p in &r.policies {
        let mut action = p.action.to_string();
        if p.dry_run {
            action.push_str(" (dry-run)");
        }
        let summary = match p.matched_rule() {
            Some(i) => format!("rule {i} matched"),
            None if p.rules.is_empty() => "no rules: matches nothing".to_owned(),
            None => "no rule matched".to_owned(),
        };
        let provider = p
            .provider
            .as_deref()
            .map(|n| format!(" provider {n:?}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "  {action:<16} {:<width$}  {summary}{provider}",
            p.policy.to_string()
        );
        for rule in &p.rules {
            let (tag, lines): (&str, Vec<&str>) = match &rule.outcome {
                RuleOutcome::Matched { why } => {
                    ("matched", why.iter().map(String::as_str).collect())
                }
                RuleOutcome::NotMatched { why } => ("no match", vec![why.as_str()]),
                RuleOutcome::Dropped { why } => ("dropped", vec![why.as_str()]),
            };
            let _ = writeln!(
                out,
                "      rule {:<3} {tag:<9} {}",
                rule.rule,
                lines.first().copied().unwrap_or("")
            );
            for l in lines.iter().skip(1) {
                let _ = writeln!(out, "      {:<19}{l}", "");
            }
            for ignored in &rule.ignored {
                let _ = writeln!(out, "      {:<19}note: {ignored}", "");
            }
        }
    }
    if !r.request_authentications.is_empty() {
        let _ = writeln!(
            out,
            "\nRequestAuthentications applied: {}",
            r.request_authentications.join(", ")
        );
    }
    if !r.warnings.is_empty() {
        let _ = writeln!(out, "\nWarnings ({}):", r.warnings.len());
        for w in &r.warnings {
            let _ = writeln!(out, "  {w}");
        }
    }
    if !r.errors.is_empty() {
        let _ = writeln!(
            out,
            "\nConfiguration errors ({}): files with errors were left out of the evaluation",
            r.errors.len()
        );
        for e in &r.errors {
            let _ = writeln!(out, "  {e}");
        }
    }
    out
}
