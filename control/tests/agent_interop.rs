//! Warden's embedded agent (`warden_identity::agent::CaAgent`) against the real control plane
//! on loopback: the API contract of `docs/control.md` as the agent uses it. The agent gets a
//! certificate with a token file, installs it, fetches and verifies the CRL from
//! `/ca/crl.pem`, and sees a revocation in the next CRL.

mod common;

use std::time::Duration;

use common::*;
use warden_control::admin;
use warden_identity::agent::{AgentConfig, AgentStatus, CaAgent, IdentityHandle};
use warden_identity::tls::{TlsProvider, TlsSettings};

async fn wait_status(
    h: &IdentityHandle,
    what: &str,
    f: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let mut rx = h.subscribe();
    match tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|s| f(s))).await {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("timed out waiting for {what}; status: {:#?}", h.status()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardens_agent_gets_certificates_and_crls_from_the_control_plane() {
    let h = start(|_, _| {}).await;
    let identity = id("bookinfo", "reviews");
    let token_file = h.dir.path().join("istio-token");
    std::fs::write(&token_file, h.token("bookinfo", "reviews")).unwrap();

    let mut config = AgentConfig::new(h.cp.local_addr().to_string(), identity.clone());
    config.ca_server_name = Some("istiod.istio-system.svc".to_owned());
    config.root_cert_file = h.root_file();
    config.token_file = token_file;
    config.requested_ttl = Duration::from_secs(3600);
    config.initial_backoff = Duration::from_millis(100);
    config.max_backoff = Duration::from_millis(400);
    config.root_poll = Duration::from_millis(100);
    config.crl_refresh = Duration::from_millis(200);
    let provider = TlsProvider::new(TlsSettings::default()).unwrap();
    let agent = CaAgent::start(config, provider.clone()).unwrap();

    let ready = agent
        .wait_ready(Duration::from_secs(20))
        .await
        .unwrap_or_else(|s| panic!("agent not ready: {s:#?}"));
    assert_eq!(ready.identity.as_ref(), Some(&identity));
    let serial = ready.serial.clone().unwrap();
    assert!(
        h.cp.ca().issued_log().find(&serial).is_some(),
        "the control plane issued the agent's certificate"
    );
    let installed = provider.current().expect("credentials installed");
    assert_eq!(installed.identity(), &identity);

    // The agent fetched and verified the CRL the control plane publishes.
    wait_status(&agent, "a CRL installed", |s| {
        s.crl_updated.is_some() && s.crl_error.is_none()
    })
    .await;

    // A revocation beside the control plane reaches the agent through the CRL.
    let before = agent.status().crl_updated;
    admin::revoke_serial(&h.state(), &serial).unwrap();
    h.cp.maintain_now().await;
    let after = wait_status(&agent, "the new CRL", |s| s.crl_updated != before).await;
    assert!(after.crl_error.is_none(), "{after:#?}");
    let crl = curl_or_http_crl(&h).await;
    assert!(crl.contains(&serial.to_string()), "{crl:?}");

    agent.stop().await;
    h.cp.shutdown().await;
}

/// The serials of the published CRL (through curl when installed; else read from the CA).
async fn curl_or_http_crl(h: &Harness) -> Vec<String> {
    if have("curl", "CRL over HTTPS with curl") {
        crl_serials(&curl(&h.root_file(), &h.https_url("/ca/crl.pem")).unwrap())
    } else {
        crl_serials(h.cp.ca().crl_pem().unwrap().as_bytes())
    }
}
