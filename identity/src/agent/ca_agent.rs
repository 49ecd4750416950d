//! The CA-backed agent: one worker task that renews the workload certificate, follows the root
//! bundle file and refreshes the CRL.

use std::time::Duration;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio::time::Instant;

use super::ca_client::{CaClient, CsrRequest};
use super::config::AgentConfig;
use super::error::AgentError;
use super::{IdentityHandle, Publisher, crl};
use crate::keys;
use crate::tls::{TlsProvider, TrustBundle, WorkloadCredentials};

/// Starts the agent. See the [module documentation](super).
#[derive(Debug)]
pub struct CaAgent;

impl CaAgent {
    /// Starts the worker on the current tokio runtime; it publishes to `provider`.
    pub fn start(config: AgentConfig, provider: TlsProvider) -> Result<IdentityHandle, AgentError> {
        let client = CaClient::new(
            &config.ca_addr,
            config.expected_ca_name(),
            config.call_timeout,
        )?;
        let (publisher, status) =
            Publisher::new(provider, &format!("the CA at {}", config.ca_addr));
        let now = Instant::now();
        let worker = Worker {
            client,
            publisher,
            file_roots: None,
            ca_roots: Vec::new(),
            crls: Vec::new(),
            failures: 0,
            crl_failures: 0,
            renew_at: now,
            root_at: now,
            crl_at: now,
            config,
        };
        Ok(IdentityHandle {
            status,
            task: Some(tokio::spawn(worker.run())),
        })
    }
}

struct Worker {
    config: AgentConfig,
    client: CaClient,
    publisher: Publisher,
    /// The root bundle file: content digest and certificates.
    file_roots: Option<([u8; 32], Vec<CertificateDer<'static>>)>,
    /// Self-signed roots that ended CA responses.
    ca_roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    failures: u32,
    crl_failures: u32,
    renew_at: Instant,
    root_at: Instant,
    crl_at: Instant,
}

fn wall_to_instant(at: OffsetDateTime) -> Instant {
    let now_wall = OffsetDateTime::now_utc();
    let now = Instant::now();
    let delta = at - now_wall;
    if delta.is_negative() {
        now
    } else {
        now + Duration::from_secs_f64(delta.as_seconds_f64())
    }
}

fn jittered(d: Duration, spread: f64) -> Duration {
    let f = 1.0 + spread * (rand::random::<f64>() * 2.0 - 1.0);
    d.mul_f64(f.max(0.0))
}

impl Worker {
    async fn run(mut self) {
        loop {
            let now = Instant::now();
            if now >= self.root_at {
                self.poll_roots();
                self.root_at = now + self.config.root_poll;
            }
            if now >= self.renew_at {
                self.renew().await;
            }
            if now >= self.crl_at {
                self.refresh_crl().await;
            }
            self.publisher.expire_if_due(OffsetDateTime::now_utc());
            self.publish_schedule();

            let mut next = self.renew_at.min(self.root_at);
            if self.config.crl_url.is_some() && self.publisher.installed.is_some() {
                next = next.min(self.crl_at);
            }
            if let Some(c) = &self.publisher.installed {
                next = next.min(wall_to_instant(c.not_after()));
            }
            tokio::time::sleep_until(next.max(Instant::now() + Duration::from_millis(1))).await;
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let exp = failures.saturating_sub(1).min(20);
        let d = self.config.initial_backoff.saturating_mul(1u32 << exp);
        jittered(d.min(self.config.max_backoff), 0.1)
    }

    fn all_roots(&self) -> Vec<CertificateDer<'static>> {
        let mut roots: Vec<CertificateDer<'static>> = self
            .file_roots
            .as_ref()
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        for r in &self.ca_roots {
            if !roots.contains(r) {
                roots.push(r.clone());
            }
        }
        roots
    }

    fn trust(&self) -> Result<TrustBundle, AgentError> {
        let bundle = TrustBundle::new(
            self.config.identity.trust_domain(),
            self.all_roots(),
            &self.config.root_cert_file.display().to_string(),
        )?
        .with_aliases(self.config.trust_domain_aliases.clone())
        .with_crls(self.crls.clone(), "CRL")?;
        Ok(bundle)
    }

    /// Re-reads the root bundle file; on change, re-installs the credentials with the new trust.
    fn poll_roots(&mut self) {
        let path = &self.config.root_cert_file;
        let err = |reason: String| AgentError::RootBundle {
            path: path.clone(),
            reason,
        };
        let result = std::fs::read(path)
            .map_err(|e| err(e.to_string()))
            .and_then(|bytes| {
                let digest = sha256(&bytes);
                if self.file_roots.as_ref().is_some_and(|(d, _)| *d == digest) {
                    return Ok(None);
                }
                let roots = crate::tls::credentials_pem_certs(&bytes, &path.display().to_string())
                    .map_err(|e| err(e.to_string()))?;
                Ok(Some((digest, roots)))
            });
        match result {
            Ok(None) => {}
            Ok(Some(new)) => {
                let first = self.file_roots.is_none();
                self.file_roots = Some(new);
                if !first {
                    tracing::info!(path = %path.display(), "root bundle changed");
                    self.reinstall("root bundle change");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "root bundle unusable; keeping the previous one");
                if self.file_roots.is_none() {
                    self.publisher.publish(|s| s.last_error = Some(e));
                }
            }
        }
    }

    /// Installs the current certificate again with the current trust (new roots or CRLs). If
    /// the new trust no longer covers our certificate, renews at once.
    fn reinstall(&mut self, why: &str) {
        let Some(current) = &self.publisher.installed else {
            return;
        };
        let result = self
            .trust()
            .and_then(|t| current.with_trust(t).map_err(AgentError::from));
        match result {
            Ok(creds) => {
                if let Err(e) = self.publisher.install(creds) {
                    tracing::warn!(error = %e, why, "re-installing credentials failed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, why, "our certificate does not fit the new trust bundle: renewing now");
                self.renew_at = Instant::now();
            }
        }
    }

    async fn renew(&mut self) {
        match self.obtain().await {
            Ok(creds) => {
                let received = OffsetDateTime::now_utc();
                let start = creds.not_before().max(received);
                let life = creds.not_after() - start;
                let spread = self.config.grace_jitter * (rand::random::<f64>() * 2.0 - 1.0);
                let renew_wall =
                    start + life * (self.config.grace_ratio + spread).clamp(0.01, 0.99);
                tracing::info!(
                    identity = %creds.identity(),
                    serial = %creds.serial(),
                    not_after = %creds.not_after(),
                    renew_at = %renew_wall,
                    "workload certificate obtained from the CA"
                );
                self.renew_at = wall_to_instant(renew_wall);
                self.failures = 0;
                let installed = self.publisher.install(creds);
                self.publisher.publish(|s| {
                    s.certificates_installed += 1;
                    s.consecutive_failures = 0;
                    s.last_error = installed.err();
                    s.next_renewal = Some(renew_wall);
                });
                // A new certificate may chain through a new intermediate: refresh its CRL soon.
                if self.crls.is_empty() {
                    self.crl_at = Instant::now();
                }
            }
            Err(e) => {
                self.failures += 1;
                let delay = self.backoff(self.failures);
                tracing::warn!(
                    error = %e,
                    attempt = self.failures,
                    retry_in = ?delay,
                    still_valid = self.publisher.installed.is_some(),
                    "certificate renewal failed"
                );
                self.renew_at = Instant::now() + delay;
                let failures = self.failures;
                self.publisher.publish(|s| {
                    s.consecutive_failures = failures;
                    s.last_error = Some(e);
                });
            }
        }
    }

    /// One CSR round trip.
    async fn obtain(&mut self) -> Result<WorkloadCredentials, AgentError> {
        if self.file_roots.is_none() {
            self.poll_roots();
        }
        if self.file_roots.is_none() && self.ca_roots.is_empty() {
            return Err(AgentError::RootBundle {
                path: self.config.root_cert_file.clone(),
                reason: "no root bundle: cannot check the CA's certificate".to_owned(),
            });
        }
        let token_path = &self.config.token_file;
        let token = std::fs::read_to_string(token_path).map_err(|e| AgentError::Token {
            path: token_path.clone(),
            reason: e.to_string(),
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(AgentError::Token {
                path: token_path.clone(),
                reason: "the file is empty".to_owned(),
            });
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AgentError::Token {
                path: token_path.clone(),
                reason: "the token holds characters that cannot be sent in a header".to_owned(),
            });
        }
        let key_err = |e: keys::KeyError| AgentError::Key {
            reason: e.to_string(),
        };
        // The key lives in memory only: it is handed to rustls and never written anywhere.
        let key = self.config.key_algorithm.generate().map_err(key_err)?;
        let csr = keys::csr_pem(&key, &self.config.identity).map_err(key_err)?;
        let ttl_secs = self.config.requested_ttl.as_secs().min(i64::MAX as u64) as i64;
        let chain_pem = self
            .client
            .create_certificate(
                &self.all_roots(),
                CsrRequest {
                    csr_pem: csr,
                    ttl_secs,
                    token,
                    cluster_id: self.config.cluster_id.as_deref(),
                },
            )
            .await?;
        let bad = |reason: String| AgentError::BadResponse {
            addr: self.config.ca_addr.clone(),
            reason,
        };
        if chain_pem.is_empty() {
            return Err(bad("empty cert_chain".to_owned()));
        }
        let mut chain = Vec::with_capacity(chain_pem.len());
        for (i, pem) in chain_pem.iter().enumerate() {
            let certs = crate::tls::credentials_pem_certs(pem.as_bytes(), "cert_chain")
                .map_err(|e| bad(format!("entry #{i}: {e}")))?;
            chain.extend(certs);
        }
        // The root that ends the chain is trusted too (the CA was authenticated by the bundle);
        // this is how a CA-side root change reaches the workload.
        if chain.len() > 1
            && let Some(last) = chain.last()
            && crate::x509::parse(last).is_ok_and(|c| crate::x509::is_self_signed(&c))
            && !self.ca_roots.contains(last)
        {
            self.ca_roots = vec![last.clone()];
        }
        let key_der = PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let creds = WorkloadCredentials::new(chain, key_der, self.trust()?, "CA response")
            .map_err(|e| bad(e.to_string()))?;
        if creds.identity() != &self.config.identity {
            return Err(bad(format!(
                "the certificate is for {}, not {}",
                creds.identity(),
                self.config.identity
            )));
        }
        Ok(creds)
    }

    async fn refresh_crl(&mut self) {
        let Some(url) = self.config.crl_url.clone() else {
            self.crl_at = Instant::now() + Duration::from_secs(365 * 24 * 3600);
            return;
        };
        let Some(current) = &self.publisher.installed else {
            // Nothing to protect yet; fetch once a certificate is installed.
            self.crl_at = self.renew_at;
            return;
        };
        let mut issuers = self.all_roots();
        issuers.extend(current.chain().iter().skip(1).cloned());
        let result = match self.client.fetch(&url, &self.all_roots()).await {
            Ok(bytes) => {
                crl::parse_and_verify(&bytes, &issuers).map_err(|reason| AgentError::Crl {
                    url: url.clone(),
                    reason,
                })
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(crls) => {
                self.crl_failures = 0;
                self.crl_at = Instant::now() + jittered(self.config.crl_refresh, 0.1);
                let changed = crls != self.crls;
                if changed {
                    tracing::info!(url, crls = crls.len(), "CRL updated");
                    self.crls = crls;
                    self.reinstall("CRL update");
                }
                self.publisher.publish(|s| {
                    s.crl_error = None;
                    if changed || s.crl_updated.is_none() {
                        s.crl_updated = Some(OffsetDateTime::now_utc());
                    }
                });
            }
            Err(e) => {
                self.crl_failures += 1;
                let delay = self.backoff(self.crl_failures).min(self.config.crl_refresh);
                tracing::warn!(error = %e, retry_in = ?delay, "CRL refresh failed; keeping the previous CRL");
                self.crl_at = Instant::now() + delay;
                self.publisher.publish(|s| s.crl_error = Some(e));
            }
        }
    }

    fn publish_schedule(&self) {
        self.publisher.publish(|_| {});
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes).as_ref());
    out
}
