//! The static certificate source: files in a directory (Kubernetes secret layout with `..data`
//! symlink swaps), reloaded on change, bad updates refused, expiry fails closed, optional CRL.

mod tlsutil;

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tlsutil::*;
use warden_identity::TrustDomain;
use warden_identity::agent::{
    AgentError, AgentStatus, IdentityHandle, StaticSource, StaticSourceConfig,
};
use warden_identity::tls::{Alpn, PeerCertError, TlsError, TlsProvider, TlsSettings};
use warden_identity::x509::Serial;

/// Writes a new version directory and points `..data` at it atomically, the way the kubelet
/// updates a secret volume. The visible files are symlinks through `..data`.
fn publish_version(dir: &Path, version: &str, files: &[(&str, &str)]) {
    let vdir = dir.join(version);
    std::fs::create_dir(&vdir).unwrap();
    for (name, text) in files {
        std::fs::write(vdir.join(name), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for (name, _) in files {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(format!("..data/{name}"), &link).unwrap();
        }
    }
}

fn files<'a>(issued: &'a Issued, root: &'a str) -> [(&'static str, &'a str); 3] {
    [
        ("cert-chain.pem", issued.chain_pem.as_str()),
        ("key.pem", issued.key_pem.as_str()),
        ("root-cert.pem", root),
    ]
}

fn start(dir: &Path) -> (TlsProvider, IdentityHandle) {
    let provider = TlsProvider::new(TlsSettings::default()).unwrap();
    let mut cfg = StaticSourceConfig::new(dir, TrustDomain::default());
    cfg.poll = Duration::from_millis(50);
    let handle = StaticSource::start(cfg, provider.clone());
    (provider, handle)
}

async fn wait_status(
    h: &IdentityHandle,
    what: &str,
    f: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let mut rx = h.subscribe();
    match tokio::time::timeout(Duration::from_secs(8), rx.wait_for(|s| f(s))).await {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("timed out waiting for {what}; status: {:#?}", h.status()),
    }
}

/// The serial the server presents to a fresh (non-resumed) client.
async fn presented(server: &TlsProvider, peer: &TlsProvider) -> Result<Serial, TlsError> {
    let (c, s) = tcp_pair().await;
    let mut cfg = (**peer.current().unwrap().client(Alpn::Tcp)).clone();
    cfg.resumption = Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from("probe.invalid").unwrap();
    let (a, b) = tokio::join!(server.accept(s), connector.connect(name, c));
    a?;
    let tls = b.map_err(TlsError::from_io)?;
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    Ok(Serial::of(&cert))
}

#[tokio::test]
async fn loads_and_follows_kubernetes_style_symlink_swaps() {
    let mesh = Mesh::new();
    let root = mesh.root_pem();
    let dir = tempfile::tempdir().unwrap();
    let (provider, handle) = start(dir.path());
    // Nothing there yet: not ready, and the reason names the missing file.
    let st = wait_status(&handle, "an error", |s| s.last_error.is_some()).await;
    assert!(!st.ready);
    assert!(
        st.reason.contains("cert-chain.pem") && st.reason.starts_with("not ready"),
        "{}",
        st.reason
    );

    let v1 = mesh.issue(&id("vm", "legacy"), 3600);
    publish_version(dir.path(), "..v1", &files(&v1, &root));
    let st = wait_status(&handle, "ready", |s| s.ready).await;
    assert_eq!(st.serial.as_ref(), Some(v1.creds.serial()));
    let peer = mesh.provider(&id("app", "client"));
    assert_eq!(
        &presented(&provider, &peer).await.unwrap(),
        v1.creds.serial()
    );

    let v2 = mesh.issue(&id("vm", "legacy"), 3600);
    publish_version(dir.path(), "..v2", &files(&v2, &root));
    let st = wait_status(&handle, "the new certificate", |s| {
        s.serial.as_ref() == Some(v2.creds.serial())
    })
    .await;
    assert!(st.ready && st.last_error.is_none());
    assert_eq!(
        &presented(&provider, &peer).await.unwrap(),
        v2.creds.serial()
    );

    // A broken update (key of another certificate) is refused; the current one stays.
    let v3 = mesh.issue(&id("vm", "legacy"), 3600);
    let broken = [
        ("cert-chain.pem", v3.chain_pem.as_str()),
        ("key.pem", v1.key_pem.as_str()),
        ("root-cert.pem", root.as_str()),
    ];
    publish_version(dir.path(), "..v3", &broken);
    let st = wait_status(&handle, "a refused update", |s| s.last_error.is_some()).await;
    assert!(st.ready);
    assert_eq!(st.serial.as_ref(), Some(v2.creds.serial()));
    let err = st.last_error.unwrap();
    assert!(matches!(err, AgentError::StaticFiles { .. }));
    assert!(
        err.to_string()
            .contains("the private key does not belong to the leaf certificate"),
        "{err}"
    );
    assert_eq!(
        &presented(&provider, &peer).await.unwrap(),
        v2.creds.serial()
    );
}

#[tokio::test]
async fn an_expired_file_certificate_fails_closed_and_a_crl_file_is_used() {
    let mesh = Mesh::new();
    let root = mesh.root_pem();
    let dir = tempfile::tempdir().unwrap();
    let short = mesh.issue(&id("vm", "legacy"), 2);
    publish_version(dir.path(), "..v1", &files(&short, &root));
    let (provider, handle) = start(dir.path());
    wait_status(&handle, "ready", |s| s.ready).await;
    let st = wait_status(&handle, "expiry", |s| !s.ready).await;
    assert!(st.reason.contains("expired"), "{}", st.reason);
    assert!(!provider.has_credentials());

    // Fresh files, and a CRL that revokes one peer.
    let bad = mesh.issue(&id("app", "compromised"), 3600);
    mesh.ca.revoke_serial(bad.creds.serial()).unwrap();
    let fresh = mesh.issue(&id("vm", "legacy"), 3600);
    let crl = mesh.ca.crl_pem().unwrap();
    let mut with_crl = files(&fresh, &root).to_vec();
    with_crl.push(("crl.pem", crl.as_str()));
    publish_version(dir.path(), "..v2", &with_crl);
    wait_status(&handle, "ready again", |s| s.ready).await;
    let bad_peer = TlsProvider::new(TlsSettings::default()).unwrap();
    bad_peer.install(&bad.creds).unwrap();
    assert!(matches!(
        presented(&provider, &bad_peer).await,
        Err(TlsError::PeerCertificate(PeerCertError::Revoked { .. }))
    ));
    let good_peer = mesh.provider(&id("app", "client"));
    assert!(presented(&provider, &good_peer).await.is_ok());
}
