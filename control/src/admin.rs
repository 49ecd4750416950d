//! Administrative operations on a control plane's state directory, run from a process beside
//! the control plane (`warden control revoke`, `revoked`, `rotate-root`, `roots`).
//!
//! They change the files the running control plane watches; it picks the change up within its
//! reload interval (2 s): revocations go into the next CRL and block issuance, a staged or
//! activated root goes into the published trust bundle. Revocation state lives in `<state>/ca`
//! in both CA modes. Root rotation applies to the self-signed CA only.

use std::path::Path;

use time::OffsetDateTime;
use warden_identity::ca::RootInfo;
use warden_identity::revocation::{
    RevocationList, revocation_list_in_dir, revoke_identity_in_dir, revoke_serial_in_dir,
    unrevoke_identity_in_dir,
};
use warden_identity::{
    CaOptions, CertificateAuthority, KeyAlgorithm, Serial, SpiffeId, TrustDomain,
};

use crate::config::StatePaths;
use crate::error::ControlError;

fn ca_dir(state_dir: &Path) -> Result<std::path::PathBuf, ControlError> {
    let dir = StatePaths::new(state_dir).ca_dir;
    if !dir.is_dir() {
        return Err(ControlError::NoState { path: dir });
    }
    Ok(dir)
}

/// Revokes one certificate. Returns `false` if it was already revoked.
pub fn revoke_serial(state_dir: &Path, serial: &Serial) -> Result<bool, ControlError> {
    Ok(revoke_serial_in_dir(
        &ca_dir(state_dir)?,
        serial,
        OffsetDateTime::now_utc(),
    )?)
}

/// Revokes an identity: its unexpired certificates are revoked and nothing more is issued to
/// it. Returns the serials newly revoked.
pub fn revoke_identity(state_dir: &Path, identity: &SpiffeId) -> Result<Vec<Serial>, ControlError> {
    Ok(revoke_identity_in_dir(
        &ca_dir(state_dir)?,
        identity,
        OffsetDateTime::now_utc(),
    )?)
}

/// Lets the CA issue to an identity again (its revoked certificates stay revoked). Returns
/// `false` if it was not revoked.
pub fn unrevoke_identity(state_dir: &Path, identity: &SpiffeId) -> Result<bool, ControlError> {
    Ok(unrevoke_identity_in_dir(&ca_dir(state_dir)?, identity)?)
}

/// The revoked serials and identities.
pub fn revoked(state_dir: &Path) -> Result<RevocationList, ControlError> {
    Ok(revocation_list_in_dir(&ca_dir(state_dir)?)?)
}

/// A root operation on the self-signed CA of a state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootOperation {
    /// Generate a new root and add it to the trust bundle; keep signing with the current one.
    Stage(KeyAlgorithm),
    /// Sign with the staged root from now on; the previous root stays trusted.
    Activate,
    /// Stage and activate at once.
    Rotate(KeyAlgorithm),
    /// Drop a non-active root from the trust bundle (or cancel a staged one).
    Retire(Serial),
}

fn open_self_signed(
    state_dir: &Path,
    trust_domain: &TrustDomain,
    operation: &'static str,
) -> Result<CertificateAuthority, ControlError> {
    let dir = ca_dir(state_dir)?;
    if !dir.join("root-cert.pem").is_file() {
        return Err(ControlError::NotSelfSigned {
            operation,
            path: dir,
        });
    }
    let options = CaOptions {
        trust_domain: trust_domain.clone(),
        ..CaOptions::default()
    };
    Ok(CertificateAuthority::self_signed_admin(&dir, options)?)
}

/// The roots of the self-signed CA's trust bundle.
pub fn roots(state_dir: &Path, trust_domain: &TrustDomain) -> Result<Vec<RootInfo>, ControlError> {
    Ok(open_self_signed(state_dir, trust_domain, "listing roots")?.roots())
}

/// Applies a root operation; returns the trust bundle's roots afterwards and the root the
/// operation concerned (none for a retirement).
pub fn root_operation(
    state_dir: &Path,
    trust_domain: &TrustDomain,
    operation: &RootOperation,
) -> Result<(Option<RootInfo>, Vec<RootInfo>), ControlError> {
    let name = match operation {
        RootOperation::Stage(_) => "staging a root",
        RootOperation::Activate => "activating the staged root",
        RootOperation::Rotate(_) => "rotating the root",
        RootOperation::Retire(_) => "retiring a root",
    };
    let ca = open_self_signed(state_dir, trust_domain, name)?;
    let root = match operation {
        RootOperation::Stage(alg) => Some(ca.stage_root(*alg)?),
        RootOperation::Activate => Some(ca.activate_staged_root()?),
        RootOperation::Rotate(alg) => Some(ca.rotate_root(*alg)?),
        RootOperation::Retire(serial) => {
            ca.retire_root(serial)?;
            None
        }
    };
    Ok((root, ca.roots()))
}
