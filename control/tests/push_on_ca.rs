//! The config push API served on the CA's own listener (port 15012): one TLS listener, one
//! router; the subscriber's identity is its mesh client certificate as the CA server verified
//! it; no certificate, no config; shutdown ends the long-lived streams instead of waiting for
//! the drain timeout.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use tonic::Code;
use warden_control::client;
use warden_control::store::FileStore;
use warden_control::{ControlPlane, status};
use warden_identity::config_client::{ConfigSubscriber, SubscriberOptions};
use warden_identity::proto::config::config_discovery_client::ConfigDiscoveryClient;
use warden_identity::proto::config::{Registration, SubscribeRequest, subscribe_request};
use warden_identity::tls::{TlsProvider, TlsSettings, TrustBundle, WorkloadCredentials};
use warden_identity::{SpiffeId, TrustDomain};

const WAIT: Duration = Duration::from_secs(30);

fn policy(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  rules:\n  - from:\n    - source: {{principals: [\"cluster.local/ns/{ns}/sa/client\"]}}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_is_pushed_on_the_ca_listener_to_certificate_holders_only() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(config_dir.join("demo.yaml"), policy("demo", "demo-policy")).unwrap();
    std::fs::write(
        config_dir.join("other.yaml"),
        policy("other", "other-policy"),
    )
    .unwrap();
    let store = FileStore::open(&config_dir, None).unwrap();

    let mut cfg = base_config(dir.path());
    cfg.debug_listen = Some("127.0.0.1:0".parse().unwrap());
    // Long: shutdown must not wait for it (the streams are closed, not drained).
    cfg.drain_timeout = Duration::from_secs(120);
    let cp = tokio::task::spawn_blocking(move || ControlPlane::open(cfg))
        .await
        .unwrap()
        .unwrap()
        .with_config_source(&store)
        .start()
        .await
        .unwrap();
    let root_pem = cp.root_bundle_pem();

    // A workload certificate from this CA: the subscription gets what applies to demo/web.
    let identity = SpiffeId::istio(&TrustDomain::default(), "demo", "web").unwrap();
    let (key_pem, csr) = key_and_csr(&identity);
    let issued = cp.ca().sign_csr(&csr, &identity, 3600).unwrap();
    let trust = TrustBundle::from_pem(TrustDomain::default(), root_pem.as_bytes(), "root").unwrap();
    let creds = WorkloadCredentials::from_pem(
        issued.chain_pem.concat().as_bytes(),
        key_pem.as_bytes(),
        trust,
        "test",
    )
    .unwrap();
    let tls = TlsProvider::new(TlsSettings::default()).unwrap();
    tls.install(&creds).unwrap();
    let istiod = SpiffeId::istio(&TrustDomain::default(), "istio-system", "istiod").unwrap();
    let mut opts = SubscriberOptions::new(cp.local_addr().to_string(), vec![istiod], "demo");
    opts.pod_name = "web-0".into();
    let sub = ConfigSubscriber::spawn(tls, opts, |s| {
        Ok(s.resources
            .iter()
            .map(|r| format!("{}/{}", r.namespace, r.name))
            .collect::<Vec<_>>())
    });
    let mut rx = sub.config();
    let got = tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .expect("a snapshot")
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(got.config, ["demo/demo-policy"]);
    assert_eq!(got.version, store.current().version);

    // Its identity in the status, from the certificate, with the certificate's expiry.
    let push = cp.push().expect("push is on");
    let mut proxies = Vec::new();
    for _ in 0..300 {
        proxies = push.proxies();
        if proxies.first().is_some_and(|p| p.sync_state() == "SYNCED") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(proxies.len(), 1, "{proxies:?}");
    assert_eq!(proxies[0].identity, identity.as_str());
    assert_eq!(proxies[0].sync_state(), "SYNCED");
    assert_eq!(
        proxies[0].cert_expiry,
        issued
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    let fetched = status::fetch(cp.debug_addr().expect("debug endpoint on"))
        .await
        .unwrap();
    assert_eq!(fetched, proxies);

    // Without a client certificate (TLS to the same port, as a first CSR does): refused.
    let tls = client::tls_config(&root_pem, None, false).unwrap();
    let channel =
        client::connect_channel(cp.local_addr(), client::DEFAULT_SERVER_NAME, Arc::new(tls))
            .await
            .unwrap();
    let registration = SubscribeRequest {
        kind: Some(subscribe_request::Kind::Registration(Registration {
            namespace: "demo".into(),
            ..Registration::default()
        })),
    };
    let err = ConfigDiscoveryClient::new(channel)
        .subscribe(tokio_stream::iter([registration]))
        .await
        .expect_err("no certificate, no config");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(push.proxies().len(), 1);

    // Shutdown closes the subscription (the proxy reconnects elsewhere) instead of draining it
    // for two minutes.
    tokio::time::timeout(WAIT, cp.shutdown())
        .await
        .expect("shutdown ends subscription streams");
    let mut st = sub.status();
    tokio::time::timeout(WAIT, st.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        sub.current().unwrap().config,
        ["demo/demo-policy"],
        "the proxy keeps its config"
    );
}
