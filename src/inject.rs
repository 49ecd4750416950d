//! `warden inject -f FILE`: add Warden's init container (capture rules) and sidecar container to
//! Kubernetes workloads, like `istioctl kube-inject`; and `warden wait`, the `postStart` hook
//! that holds the app until the sidecar is ready.
//!
//! Works on Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob and `List`
//! (recursively), in multi-document files; other kinds pass through. A pod template with
//! `sidecar.istio.io/inject: "false"` (label or annotation), `hostNetwork: true`, or one that is
//! already injected is left as it is, so injecting twice changes nothing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// The injected init container's name (Istio's).
pub const INIT_NAME: &str = "istio-init";
/// The injected sidecar container's name (Istio's).
pub const PROXY_NAME: &str = "istio-proxy";
const STATUS_ANNOTATION: &str = "sidecar.istio.io/status";
const INJECT_KEY: &str = "sidecar.istio.io/inject";
const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";
const VOLUMES: [&str; 5] = [
    "istio-envoy",
    "istio-podinfo",
    "istio-token",
    "istiod-ca-cert",
    "warden-config",
];

/// Flags of `warden inject`.
#[derive(Debug, Args)]
pub struct InjectArgs {
    /// Kubernetes YAML to inject (`-` for standard input).
    #[arg(short = 'f', long = "filename")]
    file: String,
    /// Write the result here instead of standard output.
    #[arg(short = 'o', long = "output")]
    output: Option<PathBuf>,
    /// Image of the init and sidecar containers (entrypoint `warden`).
    #[arg(long, default_value = concat!("warden:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Address of the mesh CA (`CA_ADDR`).
    #[arg(long, default_value = "istiod.istio-system.svc:15012")]
    ca_address: String,
    /// Trust domain of the mesh (`TRUST_DOMAIN`).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// ConfigMap (in the workload's namespace, optional) with the Istio YAML the sidecar reads
    /// from /etc/warden/config.
    #[arg(long, default_value = "warden-mesh-config")]
    mesh_config_map: String,
    /// Start the proxy before the app containers, and hold them until it is ready (for every
    /// workload; the `proxy.istio.io/config` annotation can ask for it per workload).
    #[arg(long)]
    hold_application_until_proxy_starts: bool,
}

/// What the injected containers look like.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Container image (entrypoint `warden`).
    pub image: String,
    /// `CA_ADDR`.
    pub ca_address: String,
    /// `TRUST_DOMAIN`.
    pub trust_domain: String,
    /// ConfigMap mounted at /etc/warden/config (optional).
    pub mesh_config_map: String,
    /// Hold apps until the proxy is ready, unless a workload says otherwise.
    pub hold_application: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            image: concat!("warden:", env!("CARGO_PKG_VERSION")).to_owned(),
            ca_address: "istiod.istio-system.svc:15012".to_owned(),
            trust_domain: "cluster.local".to_owned(),
            mesh_config_map: "warden-mesh-config".to_owned(),
            hold_application: false,
        }
    }
}

/// An input that cannot be injected: names the source, the document (1-based), the object and
/// the field.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// The YAML does not parse.
    #[error("{source_name}: document {doc}: invalid YAML: {message}")]
    Yaml {
        /// File name or `<stdin>`.
        source_name: String,
        /// 1-based document index.
        doc: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A field has the wrong shape or value.
    #[error("{source_name}: document {doc} ({object}): {field}: {message}")]
    Field {
        /// File name or `<stdin>`.
        source_name: String,
        /// 1-based document index.
        doc: usize,
        /// `Kind namespace/name`.
        object: String,
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug)]
struct FieldError {
    field: String,
    message: String,
}

fn field_err(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// What happened to one pod template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Containers were added.
    Injected,
    /// Opted out (`sidecar.istio.io/inject: "false"`) or host network.
    Skipped,
    /// Already carries Warden's containers.
    AlreadyInjected,
    /// Not a workload kind.
    PassedThrough,
}

/// Injects every document of `input` (a file's contents); `source_name` is used in errors.
/// Returns the output YAML and the outcome per pod template.
pub fn inject_str(
    input: &str,
    source_name: &str,
    settings: &Settings,
) -> Result<(String, Vec<Outcome>), InjectError> {
    let mut out = String::new();
    let mut outcomes = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let doc = i + 1;
        let mut value = Value::deserialize(de).map_err(|e| InjectError::Yaml {
            source_name: source_name.to_owned(),
            doc,
            message: e.to_string(),
        })?;
        if value.is_null() {
            continue;
        }
        let object = describe(&value);
        inject_object(&mut value, "", settings, &mut outcomes).map_err(|e| InjectError::Field {
            source_name: source_name.to_owned(),
            doc,
            object,
            field: e.field,
            message: e.message,
        })?;
        if !out.is_empty() {
            out.push_str("---\n");
        }
        out.push_str(
            &serde_yaml::to_string(&value).map_err(|e| InjectError::Yaml {
                source_name: source_name.to_owned(),
                doc,
                message: e.to_string(),
            })?,
        );
    }
    Ok((out, outcomes))
}

fn describe(v: &Value) -> String {
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("<no kind>");
    let meta = v.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<no name>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{kind} {ns}/{name}"),
        None => format!("{kind} {name}"),
    }
}

fn inject_object(
    v: &mut Value,
    prefix: &str,
    s: &Settings,
    outcomes: &mut Vec<Outcome>,
) -> Result<(), FieldError> {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let template_path: &[&str] = match kind.as_str() {
        "Pod" => &[],
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        "List" => {
            let items = match v.get_mut("items") {
                None | Some(Value::Null) => return Ok(()),
                Some(Value::Sequence(items)) => items,
                Some(_) => return Err(field_err(format!("{prefix}items"), "expected a list")),
            };
            for (i, item) in items.iter_mut().enumerate() {
                inject_object(item, &format!("{prefix}items[{i}]."), s, outcomes)?;
            }
            return Ok(());
        }
        _ => {
            outcomes.push(Outcome::PassedThrough);
            return Ok(());
        }
    };
    let mut path = prefix.to_owned();
    let mut pod = v;
    for key in template_path {
        path.push_str(key);
        path.push('.');
        pod = match pod {
            Value::Mapping(m) => m
                .get_mut(*key)
                .ok_or_else(|| field_err(path.trim_end_matches('.'), "missing"))?,
            _ => {
                return Err(field_err(path.trim_end_matches('.'), "expected a mapping"));
            }
        };
    }
    let outcome = inject_pod(pod, &path, s)?;
    outcomes.push(outcome);
    Ok(())
}

fn as_map<'a>(v: &'a mut Value, field: &str) -> Result<&'a mut Mapping, FieldError> {
    if v.is_null() {
        *v = Value::Mapping(Mapping::new());
    }
    match v {
        Value::Mapping(m) => Ok(m),
        _ => Err(field_err(field, "expected a mapping")),
    }
}

fn child_map<'a>(
    parent: &'a mut Mapping,
    key: &str,
    field: &str,
) -> Result<&'a mut Mapping, FieldError> {
    let entry = parent
        .entry(Value::from(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    as_map(entry, field)
}

fn child_seq<'a>(
    parent: &'a mut Mapping,
    key: &str,
    field: &str,
) -> Result<&'a mut Vec<Value>, FieldError> {
    let entry = parent
        .entry(Value::from(key))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if entry.is_null() {
        *entry = Value::Sequence(Vec::new());
    }
    match entry {
        Value::Sequence(s) => Ok(s),
        _ => Err(field_err(field, "expected a list")),
    }
}

/// A string-valued entry of `metadata.labels` / `metadata.annotations`.
fn meta_str<'a>(
    meta: &'a Mapping,
    section: &str,
    key: &str,
    path: &str,
) -> Result<Option<&'a str>, FieldError> {
    let Some(sec) = meta.get(section) else {
        return Ok(None);
    };
    if sec.is_null() {
        return Ok(None);
    }
    let Some(m) = sec.as_mapping() else {
        return Err(field_err(
            format!("{path}metadata.{section}"),
            "expected a mapping",
        ));
    };
    match m.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(field_err(
            format!("{path}metadata.{section}.{key}"),
            format!(
                "expected a string (quote it: \"{}\")",
                serde_yaml::to_string(other).unwrap_or_default().trim()
            ),
        )),
    }
}

fn inject_pod(pod: &mut Value, path: &str, s: &Settings) -> Result<Outcome, FieldError> {
    let pod = as_map(pod, path.trim_end_matches('.'))?;
    let meta = child_map(pod, "metadata", &format!("{path}metadata"))?.clone();
    for section in ["labels", "annotations"] {
        if let Some(v) = meta_str(&meta, section, INJECT_KEY, path)? {
            match v {
                "false" | "n" | "no" | "off" | "False" => return Ok(Outcome::Skipped),
                "true" | "y" | "yes" | "on" | "True" | "" => {}
                other => {
                    return Err(field_err(
                        format!("{path}metadata.{section}.{INJECT_KEY}"),
                        format!("invalid value {other:?}: expected \"true\" or \"false\""),
                    ));
                }
            }
        }
    }
    let spec_path = format!("{path}spec");
    let spec = pod
        .get(Value::from("spec"))
        .ok_or_else(|| field_err(&spec_path, "missing"))?;
    let spec = spec
        .as_mapping()
        .ok_or_else(|| field_err(&spec_path, "expected a mapping"))?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Ok(Outcome::Skipped);
    }
    let containers_path = format!("{spec_path}.containers");
    let containers = match spec.get("containers") {
        Some(Value::Sequence(c)) if !c.is_empty() => c,
        Some(Value::Sequence(_)) => return Err(field_err(&containers_path, "empty list")),
        Some(_) => return Err(field_err(&containers_path, "expected a list")),
        None => return Err(field_err(&containers_path, "missing")),
    };
    let mut app_names = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        match c.get("name").and_then(Value::as_str) {
            Some(n) => app_names.push(n.to_owned()),
            None => {
                return Err(field_err(
                    format!("{containers_path}[{i}].name"),
                    "missing (every container needs a name)",
                ));
            }
        }
    }
    if meta_str(&meta, "annotations", STATUS_ANNOTATION, path)?.is_some()
        || app_names.iter().any(|n| n == PROXY_NAME)
    {
        return Ok(Outcome::AlreadyInjected);
    }

    let hold = match meta_str(&meta, "annotations", PROXY_CONFIG_ANNOTATION, path)? {
        Some(text) => {
            let field = format!("{path}metadata.annotations.{PROXY_CONFIG_ANNOTATION}");
            let cfg: Value = serde_yaml::from_str(text)
                .map_err(|e| field_err(&field, format!("not YAML: {e}")))?;
            match cfg.get("holdApplicationUntilProxyStarts") {
                None => s.hold_application,
                Some(Value::Bool(b)) => *b,
                Some(_) => {
                    return Err(field_err(
                        format!("{field}: holdApplicationUntilProxyStarts"),
                        "expected true or false",
                    ));
                }
            }
        }
        None => s.hold_application,
    };
    let init_args = iptables_args(&meta, path)?;

    // Metadata.
    let meta = child_map(pod, "metadata", &format!("{path}metadata"))?;
    let labels = child_map(meta, "labels", &format!("{path}metadata.labels"))?;
    labels.insert("security.istio.io/tlsMode".into(), "istio".into());
    let canonical_name = labels
        .get("app.kubernetes.io/name")
        .or_else(|| labels.get("app"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let canonical_rev = labels
        .get("app.kubernetes.io/version")
        .or_else(|| labels.get("version"))
        .and_then(Value::as_str)
        .unwrap_or("latest")
        .to_owned();
    if let Some(n) = canonical_name {
        labels
            .entry("service.istio.io/canonical-name".into())
            .or_insert(n.into());
    }
    labels
        .entry("service.istio.io/canonical-revision".into())
        .or_insert(canonical_rev.into());
    let annotations = child_map(meta, "annotations", &format!("{path}metadata.annotations"))?;
    let status = serde_json::json!({
        "initContainers": [INIT_NAME],
        "containers": [PROXY_NAME],
        "volumes": VOLUMES,
        "imagePullSecrets": null,
        "revision": "default",
    });
    annotations.insert(STATUS_ANNOTATION.into(), status.to_string().into());
    annotations
        .entry("kubectl.kubernetes.io/default-container".into())
        .or_insert(app_names[0].clone().into());
    for (k, v) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "15020"),
        ("prometheus.io/path", "/stats/prometheus"),
    ] {
        annotations.entry(k.into()).or_insert(v.into());
    }

    // Containers and volumes.
    let spec = as_map(
        pod.get_mut(Value::from("spec"))
            .ok_or_else(|| field_err(&spec_path, "missing"))?,
        &spec_path,
    )?;
    let inits = child_seq(
        spec,
        "initContainers",
        &format!("{spec_path}.initContainers"),
    )?;
    inits.insert(0, init_container(s, init_args));
    let containers = child_seq(spec, "containers", &containers_path)?;
    if hold {
        containers.insert(0, proxy_container(s, true));
    } else {
        containers.push(proxy_container(s, false));
    }
    let volumes = child_seq(spec, "volumes", &format!("{spec_path}.volumes"))?;
    volumes.extend(proxy_volumes(s));
    Ok(Outcome::Injected)
}

/// The `warden iptables` arguments, from Istio's traffic annotations.
fn iptables_args(meta: &Mapping, path: &str) -> Result<Vec<String>, FieldError> {
    use warden_iptables::config::{
        parse_cidrs, parse_inbound_ports, parse_outbound_cidrs, parse_ports,
    };
    let ann = |k: &str| meta_str(meta, "annotations", k, path);
    let field = |k: &str| format!("{path}metadata.annotations.{k}");
    let check = |k: &str, r: Result<(), warden_iptables::ConfigError>| {
        r.map_err(|e| field_err(field(k), e.to_string()))
    };
    const MODE: &str = "sidecar.istio.io/interceptionMode";
    const IN_INC: &str = "traffic.sidecar.istio.io/includeInboundPorts";
    const IN_EXC: &str = "traffic.sidecar.istio.io/excludeInboundPorts";
    const OUT_INC: &str = "traffic.sidecar.istio.io/includeOutboundIPRanges";
    const OUT_EXC: &str = "traffic.sidecar.istio.io/excludeOutboundIPRanges";
    const PORT_INC: &str = "traffic.sidecar.istio.io/includeOutboundPorts";
    const PORT_EXC: &str = "traffic.sidecar.istio.io/excludeOutboundPorts";

    let mode = ann(MODE)?.unwrap_or("REDIRECT");
    check(
        MODE,
        mode.parse::<warden_iptables::InterceptMode>().map(|_| ()),
    )?;
    let inbound = ann(IN_INC)?.unwrap_or("*");
    check(IN_INC, parse_inbound_ports(inbound).map(|_| ()))?;
    let mut exclude_in = Vec::new();
    if let Some(v) = ann(IN_EXC)? {
        check(IN_EXC, parse_ports("-d", v).map(|_| ()))?;
        exclude_in.push(v.trim().to_owned());
    }
    exclude_in.push("15090,15021,15020".to_owned());
    let out_inc = ann(OUT_INC)?.unwrap_or("*");
    check(OUT_INC, parse_outbound_cidrs(out_inc).map(|_| ()))?;
    let out_exc = ann(OUT_EXC)?.unwrap_or("");
    check(OUT_EXC, parse_cidrs("-x", out_exc).map(|_| ()))?;

    let mut args: Vec<String> = [
        "iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", mode, "-i", out_inc, "-x",
        out_exc, "-b", inbound, "-d",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(exclude_in.join(","));
    if let Some(v) = ann(PORT_INC)? {
        check(PORT_INC, parse_ports("-q", v).map(|_| ()))?;
        args.extend(["-q".to_owned(), v.trim().to_owned()]);
    }
    if let Some(v) = ann(PORT_EXC)? {
        check(PORT_EXC, parse_ports("-o", v).map(|_| ()))?;
        args.extend(["-o".to_owned(), v.trim().to_owned()]);
    }
    Ok(args)
}

/// Builds a YAML value from JSON (readable literals for the container specs), with `name` and
/// `image` first in every mapping as Kubernetes users write them (JSON objects sort their keys).
fn yaml(v: serde_json::Value) -> Value {
    fn name_first(v: Value) -> Value {
        match v {
            Value::Mapping(m) => {
                let mut out = Mapping::new();
                for key in ["name", "image"] {
                    if let Some(x) = m.get(key) {
                        out.insert(key.into(), name_first(x.clone()));
                    }
                }
                for (k, x) in m {
                    if !out.contains_key(&k) {
                        out.insert(k, name_first(x));
                    }
                }
                Value::Mapping(out)
            }
            Value::Sequence(s) => Value::Sequence(s.into_iter().map(name_first).collect()),
            other => other,
        }
    }
    name_first(serde_yaml::to_value(v).unwrap_or(Value::Null))
}

fn init_container(s: &Settings, args: Vec<String>) -> Value {
    yaml(serde_json::json!({
        "name": INIT_NAME,
        "image": s.image,
        "args": args,
        "resources": {
            "requests": {"cpu": "10m", "memory": "40Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": false,
            "runAsGroup": 0,
            "runAsNonRoot": false,
            "runAsUser": 0,
        },
    }))
}

fn field_env(name: &str, path: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}})
}

fn proxy_container(s: &Settings, hold: bool) -> Value {
    let mut c = serde_json::json!({
        "name": PROXY_NAME,
        "image": s.image,
        "args": ["sidecar"],
        "env": [
            {"name": "CA_ADDR", "value": s.ca_address},
            {"name": "TRUST_DOMAIN", "value": s.trust_domain},
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
            field_env("SERVICE_ACCOUNT", "spec.serviceAccountName"),
            field_env("INSTANCE_IP", "status.podIP"),
            {"name": "WARDEN_LABELS_FILE", "value": "/etc/istio/pod/labels"},
            {"name": "WARDEN_CONFIG_DIR", "value": "/etc/warden/config"},
        ],
        "ports": [
            {"containerPort": 15020, "name": "http-monitoring", "protocol": "TCP"},
            {"containerPort": 15021, "name": "health", "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/healthz/ready", "port": 15021},
            "initialDelaySeconds": 1,
            "periodSeconds": 2,
            "timeoutSeconds": 3,
            "failureThreshold": 30,
        },
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "2", "memory": "1Gi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsGroup": 1337,
            "runAsNonRoot": true,
            "runAsUser": 1337,
        },
        "volumeMounts": [
            {"name": "istio-envoy", "mountPath": "/etc/istio/proxy"},
            {"name": "istio-podinfo", "mountPath": "/etc/istio/pod"},
            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
            {"name": "istiod-ca-cert", "mountPath": "/var/run/secrets/istio"},
            {"name": "warden-config", "mountPath": "/etc/warden/config", "readOnly": true},
        ],
    });
    if hold {
        c["lifecycle"] = serde_json::json!({
            "postStart": {"exec": {"command": ["warden", "wait", "--timeout-seconds", "60"]}}
        });
    }
    yaml(c)
}

fn proxy_volumes(s: &Settings) -> Vec<Value> {
    [
        serde_json::json!({"name": "istio-envoy", "emptyDir": {"medium": "Memory"}}),
        serde_json::json!({"name": "istio-podinfo", "downwardAPI": {"items": [
            {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
            {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
        ]}}),
        serde_json::json!({"name": "istio-token", "projected": {"sources": [
            {"serviceAccountToken": {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}
        ]}}),
        serde_json::json!({"name": "istiod-ca-cert", "configMap": {"name": "istio-ca-root-cert"}}),
        serde_json::json!({"name": "warden-config", "configMap": {"name": s.mesh_config_map, "optional": true}}),
    ]
    .into_iter()
    .map(yaml)
    .collect()
}

/// Runs `warden inject`.
pub fn run(args: InjectArgs) -> anyhow::Result<()> {
    let (name, input) = if args.file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        ("<stdin>".to_owned(), s)
    } else {
        let s = std::fs::read_to_string(&args.file)
            .with_context(|| format!("reading {}", args.file))?;
        (args.file.clone(), s)
    };
    let settings = Settings {
        image: args.image,
        ca_address: args.ca_address,
        trust_domain: args.trust_domain,
        mesh_config_map: args.mesh_config_map,
        hold_application: args.hold_application_until_proxy_starts,
    };
    let (out, outcomes) = inject_str(&input, &name, &settings)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, &out).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout()
            .write_all(out.as_bytes())
            .context("writing standard output")?,
    }
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
    eprintln!(
        "warden inject: {} injected, {} already injected, {} skipped, {} other objects",
        count(Outcome::Injected),
        count(Outcome::AlreadyInjected),
        count(Outcome::Skipped),
        count(Outcome::PassedThrough)
    );
    Ok(())
}

/// Flags of `warden wait`.
#[derive(Debug, Args)]
pub struct WaitArgs {
    /// The sidecar's health port.
    #[arg(long, default_value_t = 15021)]
    port: u16,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_seconds: u64,
}

/// True when `GET /healthz/ready` on `127.0.0.1:port` answers 200.
fn ready(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok()
        && (&head[..] == b"HTTP/1.1 200" || &head[..] == b"HTTP/1.0 200")
}

/// Runs `warden wait`: polls the local sidecar's readiness until it answers 200.
pub fn wait(args: WaitArgs) -> anyhow::Result<()> {
    let start = Instant::now();
    let limit = Duration::from_secs(args.timeout_seconds);
    loop {
        if ready(args.port) {
            eprintln!("warden wait: sidecar ready after {:?}", start.elapsed());
            return Ok(());
        }
        if start.elapsed() >= limit {
            anyhow::bail!(
                "the sidecar on 127.0.0.1:{}/healthz/ready was not ready within {}s",
                args.port,
                args.timeout_seconds
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
