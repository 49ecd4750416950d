//! `warden inject` and `warden wait` as the user runs them: real manifests in
//! tests/data/inject/, the output compared with a reviewed golden file and checked field by
//! field, idempotence, stdin/-o, errors naming the document and field, and the postStart wait.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_yaml::Value;

const BIN: &str = env!("CARGO_BIN_EXE_warden");
const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/inject");

fn warden(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        pipe.write_all(s.as_bytes()).unwrap();
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn inject(args: &[&str], stdin: Option<&str>) -> String {
    let out = warden(args, stdin);
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    let mut cur = v;
    for key in path.split('.') {
        cur = match key.parse::<usize>() {
            Ok(i) => &cur[i],
            Err(_) => &cur[key],
        };
    }
    cur
}

fn names(list: &Value) -> Vec<&str> {
    list.as_sequence()
        .map(|s| s.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect()
}

fn env_of<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

#[test]
fn injects_every_workload_kind_like_kube_inject() {
    let input = Path::new(DATA).join("workloads.yaml");
    let out = inject(&["inject", "-f", input.to_str().unwrap()], None);

    let golden = Path::new(DATA).join("workloads.injected.yaml");
    if std::env::var("WARDEN_UPDATE_GOLDEN").as_deref() == Ok("1") {
        std::fs::write(&golden, &out).unwrap();
    }
    assert_eq!(
        out,
        std::fs::read_to_string(&golden).unwrap(),
        "differs from {golden:?}"
    );

    let before = docs(&std::fs::read_to_string(&input).unwrap());
    let after = docs(&out);
    assert_eq!(before.len(), after.len());
    let templates = [
        (0, "spec.template"),                  // Deployment
        (2, "spec.template"),                  // StatefulSet
        (3, "spec.template"),                  // DaemonSet
        (4, "spec.template"),                  // ReplicaSet
        (5, "spec.template"),                  // Job (hold)
        (6, "spec.jobTemplate.spec.template"), // CronJob
        (7, ""),                               // Pod
        (9, "items.0.spec.template"),          // List > Deployment
    ];
    for (doc, path) in templates {
        let pod = if path.is_empty() {
            &after[doc]
        } else {
            get(&after[doc], path)
        };
        let what = format!("document {} {path}", doc + 1);
        let spec = &pod["spec"];
        let init = &spec["initContainers"][0];
        assert_eq!(init["name"], "istio-init", "{what}");
        assert_eq!(strs(&init["args"])[0], "iptables", "{what}");
        assert_eq!(
            strs(&init["securityContext"]["capabilities"]["add"]),
            ["NET_ADMIN", "NET_RAW"]
        );
        assert_eq!(init["securityContext"]["runAsUser"], 0);
        let hold = doc == 5;
        let proxy = if hold {
            &spec["containers"][0]
        } else {
            spec["containers"].as_sequence().unwrap().last().unwrap()
        };
        assert_eq!(proxy["name"], "istio-proxy", "{what}");
        assert_eq!(strs(&proxy["args"]), ["sidecar"]);
        let sc = &proxy["securityContext"];
        assert_eq!(
            (sc["runAsUser"].as_u64(), sc["runAsGroup"].as_u64()),
            (Some(1337), Some(1337))
        );
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(proxy["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
        assert_eq!(proxy["readinessProbe"]["httpGet"]["port"], 15021);
        assert_eq!(
            env_of(proxy, "CA_ADDR")["value"],
            "istiod.istio-system.svc:15012"
        );
        assert_eq!(env_of(proxy, "TRUST_DOMAIN")["value"], "cluster.local");
        assert_eq!(
            env_of(proxy, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            env_of(proxy, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(
            env_of(proxy, "SERVICE_ACCOUNT")["valueFrom"]["fieldRef"]["fieldPath"],
            "spec.serviceAccountName"
        );
        let mounts: Vec<(&str, &str)> = proxy["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap(),
                    m["mountPath"].as_str().unwrap(),
                )
            })
            .collect();
        assert!(mounts.contains(&("istio-token", "/var/run/secrets/tokens")));
        assert!(mounts.contains(&("istiod-ca-cert", "/var/run/secrets/istio")));
        let vols = spec["volumes"].as_sequence().unwrap();
        let token = vols.iter().find(|v| v["name"] == "istio-token").unwrap();
        assert_eq!(
            get(token, "projected.sources.0.serviceAccountToken.audience"),
            "istio-ca"
        );
        let ca = vols.iter().find(|v| v["name"] == "istiod-ca-cert").unwrap();
        assert_eq!(ca["configMap"]["name"], "istio-ca-root-cert");
        let meta = &pod["metadata"];
        assert_eq!(
            meta["labels"]["security.istio.io/tlsMode"], "istio",
            "{what}"
        );
        let status: serde_json::Value = serde_json::from_str(
            meta["annotations"]["sidecar.istio.io/status"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status["containers"][0], "istio-proxy");
        assert_eq!(meta["annotations"]["prometheus.io/scrape"], "true");
        assert_eq!(
            meta["annotations"]["prometheus.io/path"],
            "/stats/prometheus"
        );
        if doc != 7 {
            assert_eq!(meta["annotations"]["prometheus.io/port"], "15020");
        }
        assert_eq!(
            proxy["lifecycle"].is_mapping(),
            hold,
            "{what}: postStart only when holding"
        );
        if hold {
            assert_eq!(
                strs(get(proxy, "lifecycle.postStart.exec.command"))[..2],
                ["warden", "wait"]
            );
        }
    }
    // The app's containers and init containers are kept, in order.
    assert_eq!(
        names(get(&after[7], "spec.initContainers")),
        ["istio-init", "setup"]
    );
    assert_eq!(
        names(get(&after[7], "spec.containers")),
        ["shell", "istio-proxy"]
    );
    assert_eq!(
        names(get(&after[5], "spec.template.spec.containers")),
        ["istio-proxy", "migrate"]
    );
    // A port the app declares for its own metrics is not taken over.
    assert_eq!(
        get(&after[7], "metadata.annotations")["prometheus.io/port"],
        "9102"
    );
    // Traffic annotations become `warden iptables` flags.
    let db = strs(get(&after[2], "spec.template.spec.initContainers.0.args"));
    assert_eq!(
        db.join(" "),
        "iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i * -x 10.0.0.0/8 -b * -d 5432,15090,15021,15020"
    );
    let dbg = strs(get(&after[7], "spec.initContainers.0.args"));
    assert_eq!(dbg[dbg.len() - 2..], ["-o", "22,3306"]);
    // Untouched: the Service, the opted-out Deployment, the ConfigMap in the List.
    assert_eq!(after[1], before[1]);
    assert_eq!(after[8], before[8]);
    assert_eq!(get(&after[9], "items.1"), get(&before[9], "items.1"));
    // The default injection arguments are exactly kube-inject's.
    let cart = strs(get(&after[0], "spec.template.spec.initContainers.0.args"));
    assert_eq!(
        cart.join(" "),
        "iptables -p 15001 -z 15006 -u 1337 -m REDIRECT -i * -x  -b * -d 15090,15021,15020"
    );
}

#[test]
fn injecting_twice_changes_nothing_and_stdin_and_output_file_work() {
    let input = std::fs::read_to_string(Path::new(DATA).join("workloads.yaml")).unwrap();
    let once = inject(&["inject", "-f", "-"], Some(&input));
    let out = warden(&["inject", "-f", "-"], Some(&once));
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), once);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 injected, 8 already injected, 1 skipped")
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("out.yaml");
    let printed = inject(
        &[
            "inject",
            "-f",
            "-",
            "-o",
            file.to_str().unwrap(),
            "--image",
            "registry.example/warden:9",
            "--hold-application-until-proxy-starts",
        ],
        Some(&input),
    );
    assert!(printed.is_empty());
    let written = docs(&std::fs::read_to_string(&file).unwrap());
    let c = get(&written[0], "spec.template.spec.containers");
    assert_eq!(
        names(c),
        ["istio-proxy", "cart"],
        "the flag holds every workload"
    );
    assert_eq!(c[0]["image"], "registry.example/warden:9");
}

#[test]
fn errors_name_the_document_and_the_field() {
    let bad_containers = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n\
        apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad, namespace: shop}\n\
        spec:\n  template:\n    spec:\n      containers: oops\n";
    let out = warden(&["inject", "-f", "-"], Some(bad_containers));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("<stdin>: document 2 (Deployment shop/bad): spec.template.spec.containers: expected a list"),
        "{err}"
    );

    let bad_yaml = "kind: ConfigMap\nmetadata: {name: a}\n---\nkind: Pod\nmetadata: {name: [\n";
    let err = String::from_utf8_lossy(&warden(&["inject", "-f", "-"], Some(bad_yaml)).stderr)
        .into_owned();
    assert!(err.contains("document 2: invalid YAML"), "{err}");

    let bad_annotation = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  annotations:\n    \
        traffic.sidecar.istio.io/excludeOutboundIPRanges: 10.0.0.0/33\nspec:\n  containers: [{name: a, image: x}]\n";
    let err = String::from_utf8_lossy(&warden(&["inject", "-f", "-"], Some(bad_annotation)).stderr)
        .into_owned();
    assert!(
        err.contains("document 1 (Pod p): metadata.annotations.traffic.sidecar.istio.io/excludeOutboundIPRanges: -x: invalid value \"10.0.0.0/33\""),
        "{err}"
    );

    let unquoted = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {sidecar.istio.io/inject: false}\nspec:\n  containers: [{name: a}]\n";
    let err = String::from_utf8_lossy(&warden(&["inject", "-f", "-"], Some(unquoted)).stderr)
        .into_owned();
    assert!(
        err.contains("metadata.labels.sidecar.istio.io/inject: expected a string"),
        "{err}"
    );

    let out = warden(&["inject", "-f", "/nonexistent/warden.yaml"], None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading /nonexistent/warden.yaml"));
}

/// `warden wait` (the postStart hook) returns once /healthz/ready answers 200, and fails when
/// it never does.
#[test]
fn wait_holds_until_the_sidecar_is_ready() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for (i, s) in l.incoming().enumerate() {
            let mut s = s.unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"GET /healthz/ready HTTP/1.0\r\n"));
            if i < 2 {
                s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                    .unwrap();
            } else {
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .unwrap();
                return i + 1;
            }
        }
        0
    });
    let out = warden(
        &[
            "wait",
            "--port",
            &port.to_string(),
            "--timeout-seconds",
            "30",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(server.join().unwrap(), 3, "ready on the third probe");

    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = warden(
        &[
            "wait",
            "--port",
            &closed.to_string(),
            "--timeout-seconds",
            "1",
        ],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("was not ready within 1s"));
}

/// deploy/control.yaml parses, its control plane opts out of injection, and every flag it passes
/// to `warden control` exists.
#[test]
fn deploy_manifests_parse_and_the_control_plane_is_not_injected() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/control.yaml");
    let out = warden(&["inject", "-f", path], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 injected, 0 already injected, 1 skipped")
    );
    let all = docs(&std::fs::read_to_string(path).unwrap());
    let kinds: Vec<&str> = all.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    for k in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
    ] {
        assert!(kinds.contains(&k), "no {k} in deploy/control.yaml");
    }
    let deploy = all.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let c = get(deploy, "spec.template.spec.containers.0");
    let args = strs(&c["args"]);
    assert_eq!(args[0], "control");
    let help = warden(&["control", "--help"], None);
    let help = String::from_utf8_lossy(&help.stdout);
    for a in &args[1..] {
        let flag = a.split('=').next().unwrap();
        assert!(help.contains(flag), "warden control has no {flag}");
    }
    let mounts: Vec<&str> = c["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(
        mounts.contains(&"/var/lib/warden/control"),
        "the CA state is on a volume"
    );
    let service = all.iter().find(|d| d["kind"] == "Service").unwrap();
    let ports: Vec<u64> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [15012, 15014]);
}
