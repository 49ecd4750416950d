//! The workload certificate: started from the sidecar's [`CertSource`] with the identity crate's
//! sources (the embedded CA agent, or the static directory), which publish to the sidecar's
//! [`TlsProvider`](warden_identity::tls::TlsProvider). This module only starts them and
//! describes what is installed for `/certs` and readiness; it loads nothing itself.

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use warden_identity::agent::{
    AgentError, AgentStatus, CaAgent, IdentityHandle, StaticSource, StaticSourceConfig,
};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::config::{CertSource, SidecarConfig};
use crate::state::Shared;

/// Starts the certificate source of `shared.config` on the current runtime and hands its
/// status to `shared` (readiness, `/certs`). Keep the handle: dropping it stops the source.
pub fn start(shared: &Shared) -> Result<IdentityHandle, AgentError> {
    let handle = match &shared.config.certs {
        CertSource::StaticDir(dir) => {
            let mut c = StaticSourceConfig::new(dir, shared.config.identity.trust_domain.clone());
            c.poll = shared.config.reload_interval;
            c.expected_identity = Some(shared.config.identity.spiffe_id());
            StaticSource::start(c, shared.tls.clone())
        }
        CertSource::Ca(agent) => CaAgent::start((**agent).clone(), shared.tls.clone())?,
    };
    shared.set_cert_status(handle.subscribe());
    Ok(handle)
}

/// Where certificates come from, in words.
pub fn describe_source(config: &SidecarConfig) -> String {
    match &config.certs {
        CertSource::StaticDir(dir) => format!("static directory {}", dir.display()),
        CertSource::Ca(agent) => format!("CA at {}", agent.ca_addr),
    }
}

fn fmt(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Subject, issuer, serial, validity and URI SANs of each DER certificate.
pub fn describe_chain<'a>(chain: impl IntoIterator<Item = &'a [u8]>) -> Vec<Value> {
    let now = OffsetDateTime::now_utc();
    chain
        .into_iter()
        .map(|der| match X509Certificate::from_der(der) {
            Ok((_, c)) => {
                let uris: Vec<String> = c
                    .subject_alternative_name()
                    .ok()
                    .flatten()
                    .map(|san| {
                        san.value
                            .general_names
                            .iter()
                            .filter_map(|n| match n {
                                GeneralName::URI(u) => Some((*u).to_owned()),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let not_after = c.validity().not_after.to_datetime();
                json!({
                    "subject": c.subject().to_string(),
                    "issuer": c.issuer().to_string(),
                    "serial": c.raw_serial_as_string(),
                    "uri_sans": uris,
                    "not_before": fmt(c.validity().not_before.to_datetime()),
                    "not_after": fmt(not_after),
                    "seconds_until_expiry": (not_after - now).whole_seconds(),
                })
            }
            Err(e) => json!({"error": e.to_string()}),
        })
        .collect()
}

/// The `/certs` page: the installed chain (or why there is none) and the agent's status.
pub fn certs_page(shared: &Shared) -> Value {
    let status: Option<AgentStatus> = shared.cert_status();
    let agent = status.as_ref().map(|s| {
        json!({
            "ready": s.ready,
            "reason": s.reason,
            "certificates_installed": s.certificates_installed,
            "next_renewal": s.next_renewal.map(fmt),
            "consecutive_failures": s.consecutive_failures,
            "last_error": s.last_error.as_ref().map(ToString::to_string),
            "crl_updated": s.crl_updated.map(fmt),
            "crl_error": s.crl_error.as_ref().map(ToString::to_string),
        })
    });
    let source = describe_source(&shared.config);
    let Some(cur) = shared.tls.current() else {
        return json!({
            "source": source,
            "certificates": [],
            "reason": shared.readiness().err(),
            "agent": agent,
        });
    };
    let not_after = cur.not_after();
    json!({
        "source": source,
        "identity": cur.identity().as_str(),
        "serial": status.as_ref().and_then(|s| s.serial.as_ref()).map(ToString::to_string),
        "not_after": fmt(not_after),
        "seconds_until_expiry": (not_after - OffsetDateTime::now_utc()).whole_seconds(),
        "trust_domain": cur.trust().trust_domain().as_str(),
        "roots": cur.trust().roots().len(),
        "chain": describe_chain(cur.chain().iter().map(|c| c.as_ref())),
        "agent": agent,
    })
}
