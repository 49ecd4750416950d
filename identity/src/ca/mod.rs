//! The mesh certificate authority (what istiod's CA does).
//!
//! Two modes:
//! - **self-signed** ([`CertificateAuthority::self_signed`]): a root generated on first start
//!   and kept in a directory (key 0600), reloaded with the same key on every start, re-issued
//!   with the same key when 20% of its life remains ([`CertificateAuthority::maybe_reissue_root`]),
//!   and rotatable to a new key in stages (see `docs/ca.md`);
//! - **plugin** ([`CertificateAuthority::plugin`]): an operator-provided intermediate in Istio's
//!   `cacerts` layout, checked before use (key matches, CA allowed to sign, chain verifies up to
//!   a root, nothing expired).
//!
//! [`CertificateAuthority::sign_csr`] issues workload certificates: only the CSR's public key is
//! used (after its self-signature is verified); the identity is the caller's authenticated one.
//! Revocation ([`CertificateAuthority::revoke_identity`], [`CertificateAuthority::revoke_serial`])
//! is persisted and published as a signed X.509 CRL ([`CertificateAuthority::crl`]).
//!
//! The CA is `Send + Sync`; share it in an `Arc`. Signing takes `&self` and does not block on
//! other signers (the signing material is swapped atomically on reload or rotation).

mod checks;
mod csr;
mod error;
mod plugin;
mod selfsigned;
mod signer;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

pub(crate) use self::checks::{check_ca, check_issued_by, check_validity, read_certs};
pub use self::csr::MIN_RSA_BITS;
pub use self::error::CaError;
pub use self::plugin::PluginFiles;
pub(crate) use self::signer::Signer;
pub(crate) use self::signer::ca_params;

use crate::keys::KeyAlgorithm;
use crate::revocation::{IssuedLog, IssuedRecord, RevocationList, RevocationStore};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509::{self, Serial};

/// Istio's default workload certificate lifetime (24h).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);
/// Istio's default maximum workload certificate lifetime (90 days).
pub const DEFAULT_MAX_WORKLOAD_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// Istio's self-signed root lifetime (10 years).
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// How the CA behaves. `Default` gives Istio's defaults.
#[derive(Debug, Clone)]
pub struct CaOptions {
    /// The trust domain the CA issues for (and the self-signed root's organization).
    pub trust_domain: TrustDomain,
    /// Further trust domains the CA also issues for (Istio's trust domain aliases).
    pub trust_domain_aliases: Vec<TrustDomain>,
    /// Lifetime of a workload certificate when the request asks for 0 or less (24h).
    pub default_ttl: Duration,
    /// Longest workload lifetime a request may ask for; more is refused (90 days).
    pub max_ttl: Duration,
    /// Lifetime of a generated self-signed root (10 years).
    pub root_ttl: Duration,
    /// Key algorithm of a generated self-signed root (ECDSA P-256).
    pub root_key: KeyAlgorithm,
    /// Re-issue the self-signed root when less than this fraction of its life remains (0.2).
    pub root_reissue_fraction: f64,
    /// How far `notBefore` is back-dated to absorb clock skew (5 minutes).
    pub backdate: Duration,
    /// CRL validity: `nextUpdate - thisUpdate` (24h). A CRL is regenerated when half of it has
    /// passed or when the revocations change.
    pub crl_validity: Duration,
}

impl Default for CaOptions {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::default(),
            trust_domain_aliases: Vec::new(),
            default_ttl: DEFAULT_WORKLOAD_TTL,
            max_ttl: DEFAULT_MAX_WORKLOAD_TTL,
            root_ttl: DEFAULT_ROOT_TTL,
            root_key: KeyAlgorithm::EcdsaP256,
            root_reissue_fraction: 0.2,
            backdate: Duration::from_secs(5 * 60),
            crl_validity: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where the CA's signing material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaMode {
    /// A self-signed root kept in this directory.
    SelfSigned {
        /// The CA directory.
        dir: PathBuf,
    },
    /// An operator-provided CA.
    Plugin {
        /// The plugin files.
        files: PluginFiles,
    },
}

/// A signed workload certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The chain, one PEM certificate per entry: the leaf first, the root last (Istio's
    /// `IstioCertificateResponse.cert_chain`).
    pub chain_pem: Vec<String>,
    /// The leaf's serial.
    pub serial: Serial,
    /// The leaf's `notBefore` (back-dated a little).
    pub not_before: OffsetDateTime,
    /// The leaf's `notAfter`.
    pub not_after: OffsetDateTime,
    /// The identity in the leaf's URI SAN.
    pub identity: SpiffeId,
}

impl IssuedCertificate {
    /// The leaf certificate, PEM.
    pub fn leaf_pem(&self) -> &str {
        &self.chain_pem[0]
    }

    /// The root that ends the chain, PEM.
    pub fn root_pem(&self) -> &str {
        &self.chain_pem[self.chain_pem.len() - 1]
    }
}

/// DNS names and IP addresses to add after the identity in a serving certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtraSans {
    /// DNS names, e.g. `istiod.istio-system.svc`, `localhost`.
    pub dns: Vec<String>,
    /// IP addresses, e.g. `127.0.0.1`, `::1`.
    pub ips: Vec<std::net::IpAddr>,
}

impl ExtraSans {
    fn to_san_types(&self) -> Result<Vec<rcgen::SanType>, CaError> {
        let mut out = Vec::with_capacity(self.dns.len() + self.ips.len());
        for name in &self.dns {
            let valid = !name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'*')
                });
            if !valid {
                return Err(CaError::InvalidDnsName { name: name.clone() });
            }
            out.push(rcgen::SanType::DnsName(
                name.as_str()
                    .try_into()
                    .map_err(|_| CaError::InvalidDnsName { name: name.clone() })?,
            ));
        }
        out.extend(self.ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
        Ok(out)
    }
}

/// The role of a root in the trust bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootStatus {
    /// The root the CA signs with (self-signed mode), or that anchors its chain (plugin mode).
    Active,
    /// A new root staged for rotation: trusted, not signing yet.
    Staged,
    /// An earlier root, still trusted so that certificates it issued keep verifying.
    Previous,
}

/// A root of the trust bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootInfo {
    /// Its serial.
    pub serial: Serial,
    /// Its subject.
    pub subject: String,
    /// Its `notBefore`.
    pub not_before: OffsetDateTime,
    /// Its `notAfter`.
    pub not_after: OffsetDateTime,
    /// Its key type, e.g. `ECDSA P-256`.
    pub key: String,
    /// SHA-256 of its DER encoding, lowercase hex (what `openssl x509 -fingerprint -sha256` shows).
    pub sha256_fingerprint: String,
    /// Its role.
    pub status: RootStatus,
}

impl RootInfo {
    pub(crate) fn of(
        cert: &x509_parser::certificate::X509Certificate<'_>,
        status: RootStatus,
        key: &str,
    ) -> Self {
        Self {
            serial: Serial::of(cert),
            subject: x509::subject_text(cert),
            not_before: x509::not_before(cert),
            not_after: x509::not_after(cert),
            key: key.to_owned(),
            sha256_fingerprint: aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                cert.as_raw(),
            )
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
            status,
        }
    }
}

/// A signed X.509 CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crl {
    /// DER encoding.
    pub der: Vec<u8>,
    /// PEM encoding (`X509 CRL`).
    pub pem: String,
    /// The CRL number (0 for a plugin CRL without one).
    pub number: u64,
    /// The issuer's subject.
    pub issuer: String,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: Option<OffsetDateTime>,
    /// How many serials it lists.
    pub revoked: usize,
}

impl Crl {
    fn from_der(der: Vec<u8>) -> Result<Self, String> {
        use x509_parser::prelude::FromDer;
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
            .map_err(|e| e.to_string())?;
        let number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        let out = Self {
            pem: x509::pem_encode("X509 CRL", &der),
            number,
            issuer: crl.issuer().to_string(),
            this_update: crl.last_update().to_datetime(),
            next_update: crl.next_update().map(|t| t.to_datetime()),
            revoked: crl.iter_revoked_certificates().count(),
            der: Vec::new(),
        };
        Ok(Self { der, ..out })
    }
}

/// The signing material in force; swapped whole on reload or rotation.
struct State {
    signer: Arc<Signer>,
    /// Earlier signers whose key is still held (they sign CRLs for their certificates).
    crl_signers: Vec<Arc<Signer>>,
    bundle_der: Vec<CertificateDer<'static>>,
    bundle_pem: String,
    roots: Vec<RootInfo>,
    plugin_crl: Option<Arc<Crl>>,
}

/// The mesh CA. See the [module documentation](self).
pub struct CertificateAuthority {
    mode: CaMode,
    options: CaOptions,
    state: ArcSwap<State>,
    /// Serialises reloads and root operations (signing never waits on it).
    admin: Mutex<()>,
    revocations: RevocationStore,
    issued: IssuedLog,
    /// Per signer serial: (revocation generation, CRL).
    crl_cache: Mutex<HashMap<Serial, (u64, Arc<Crl>)>>,
    /// Identity (inode, mtime, length) of the CA files at the last load.
    files_stamp: Mutex<Vec<FileStamp>>,
}

type FileStamp = (PathBuf, Option<(u64, i64, i64, u64)>);

/// What identifies the current content of every CA file (a changed file changes its stamp;
/// atomic replacement changes the inode).
fn files_stamp(mode: &CaMode) -> Vec<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let mut paths: Vec<PathBuf> = match mode {
        CaMode::SelfSigned { dir } => {
            let mut v = vec![dir.join("root-cert.pem"), dir.join("root-key.pem")];
            if let Ok(entries) = std::fs::read_dir(dir.join("roots")) {
                v.extend(entries.flatten().map(|e| e.path()));
            }
            v
        }
        CaMode::Plugin { files } => {
            let mut v = vec![
                files.ca_cert.clone(),
                files.ca_key.clone(),
                files.root_cert.clone(),
            ];
            v.extend(files.cert_chain.clone());
            v.push(
                files
                    .ca_cert
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("ca-crl.pem"),
            );
            v
        }
    };
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            // Follow symlinks: Kubernetes secret mounts swap a `..data` symlink.
            let m = std::fs::metadata(&p)
                .ok()
                .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()));
            (p, m)
        })
        .collect()
}

impl fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load();
        f.debug_struct("CertificateAuthority")
            .field("mode", &self.mode)
            .field("signer", &state.signer)
            .field("roots", &state.roots.len())
            .finish_non_exhaustive()
    }
}

fn now_utc() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn probe_identity(options: &CaOptions) -> SpiffeId {
    SpiffeId::from_segments(&options.trust_domain, &["warden", "ca-self-check"])
        .unwrap_or_else(|_| options.trust_domain.id())
}

fn make_state(
    signer: Signer,
    crl_signers: Vec<Signer>,
    bundle_der: Vec<CertificateDer<'static>>,
    roots: Vec<RootInfo>,
    plugin_crl: Option<Vec<u8>>,
    options: &CaOptions,
    now: OffsetDateTime,
) -> Result<State, CaError> {
    signer.self_check(&bundle_der, &probe_identity(options), now)?;
    let plugin_crl = match plugin_crl {
        Some(der) => Some(Arc::new(
            Crl::from_der(der).map_err(|reason| CaError::SelfCheck { reason })?,
        )),
        None => None,
    };
    Ok(State {
        bundle_pem: bundle_der.iter().map(|d| x509::cert_to_pem(d)).collect(),
        signer: Arc::new(signer),
        crl_signers: crl_signers.into_iter().map(Arc::new).collect(),
        bundle_der,
        roots,
        plugin_crl,
    })
}

fn load_state(mode: &CaMode, options: &CaOptions, now: OffsetDateTime) -> Result<State, CaError> {
    match mode {
        CaMode::SelfSigned { dir } => {
            let l =
                selfsigned::load_or_create(&selfsigned::Layout { dir: dir.clone() }, options, now)?;
            make_state(
                l.signer,
                l.crl_signers,
                l.bundle,
                l.roots,
                None,
                options,
                now,
            )
        }
        CaMode::Plugin { files } => {
            let p = plugin::load(files, now)?;
            let mut roots = Vec::new();
            let anchor = p.signer.chain_der.last().cloned();
            for der in &p.bundle {
                if let Ok(c) = x509::parse(der) {
                    let status = if Some(der) == anchor.as_ref() {
                        RootStatus::Active
                    } else {
                        RootStatus::Previous
                    };
                    roots.push(RootInfo::of(&c, status, key_type(&c)));
                }
            }
            make_state(
                p.signer,
                Vec::new(),
                p.bundle,
                roots,
                p.crl_der,
                options,
                now,
            )
        }
    }
}

/// A short key type description of a certificate's public key.
pub(crate) fn key_type(cert: &x509_parser::certificate::X509Certificate<'_>) -> &'static str {
    use x509_parser::public_key::PublicKey;
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(_)) => "RSA",
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => "ECDSA P-256",
            384 => "ECDSA P-384",
            521 => "ECDSA P-521",
            _ => "ECDSA",
        },
        _ => {
            if cert.public_key().algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 {
                "Ed25519"
            } else {
                "other"
            }
        }
    }
}

fn state_dir_stores(
    state_dir: Option<&Path>,
    now: OffsetDateTime,
) -> Result<(RevocationStore, IssuedLog), CaError> {
    match state_dir {
        Some(dir) => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| CaError::io("creating directory", dir, e))?;
            Ok((RevocationStore::open(dir)?, IssuedLog::open(dir, now)?))
        }
        None => Ok((RevocationStore::in_memory(), IssuedLog::in_memory())),
    }
}

impl CertificateAuthority {
    /// Opens the self-signed CA kept in `dir`, generating its root on first start. Revocation
    /// state (`revoked.json`, `issued.jsonl`) lives in the same directory.
    pub fn self_signed(dir: impl AsRef<Path>, options: CaOptions) -> Result<Self, CaError> {
        let dir = dir.as_ref().to_owned();
        let now = now_utc();
        let mode = CaMode::SelfSigned { dir: dir.clone() };
        let state = load_state(&mode, &options, now)?;
        let (revocations, issued) = state_dir_stores(Some(&dir), now)?;
        Ok(Self::assemble(mode, options, state, revocations, issued))
    }

    /// Opens the self-signed CA in `dir` for administration from a process other than the
    /// running control plane (root rotation commands). Like [`self_signed`](Self::self_signed),
    /// but `issued.jsonl` is opened read-only: opening it for writing compacts (replaces) the
    /// file, and the running CA would go on appending to the replaced one. Such an instance
    /// cannot sign workload certificates.
    pub fn self_signed_admin(dir: impl AsRef<Path>, options: CaOptions) -> Result<Self, CaError> {
        let dir = dir.as_ref().to_owned();
        let now = now_utc();
        let mode = CaMode::SelfSigned { dir: dir.clone() };
        let state = load_state(&mode, &options, now)?;
        let revocations = RevocationStore::open(&dir)?;
        let issued = IssuedLog::read_only(&dir, now)?;
        Ok(Self::assemble(mode, options, state, revocations, issued))
    }

    /// Loads and checks the plugin CA in `plugin_dir` (which may be read-only, e.g. a mounted
    /// secret). Revocation state goes to `state_dir`; with `None` it is kept in memory only.
    pub fn plugin(
        plugin_dir: impl AsRef<Path>,
        state_dir: Option<&Path>,
        options: CaOptions,
    ) -> Result<Self, CaError> {
        let now = now_utc();
        let files = PluginFiles::detect(plugin_dir.as_ref())?;
        let mode = CaMode::Plugin { files };
        let state = load_state(&mode, &options, now)?;
        let (revocations, issued) = state_dir_stores(state_dir, now)?;
        Ok(Self::assemble(mode, options, state, revocations, issued))
    }

    fn assemble(
        mode: CaMode,
        options: CaOptions,
        state: State,
        revocations: RevocationStore,
        issued: IssuedLog,
    ) -> Self {
        tracing::info!(
            signer = %state.signer.subject,
            serial = %state.signer.serial,
            roots = state.bundle_der.len(),
            "mesh CA ready"
        );
        Self {
            files_stamp: Mutex::new(files_stamp(&mode)),
            mode,
            options,
            state: ArcSwap::from_pointee(state),
            admin: Mutex::new(()),
            revocations,
            issued,
            crl_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The mode and where the signing material comes from.
    pub fn mode(&self) -> &CaMode {
        &self.mode
    }

    /// The options in force.
    pub fn options(&self) -> &CaOptions {
        &self.options
    }

    /// Signs a workload certificate for `identity` (the caller's authenticated identity) with
    /// the public key of `csr_pem`, valid for `requested_ttl_secs` (0 or less: the default;
    /// above the maximum: refused).
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        requested_ttl_secs: i64,
    ) -> Result<IssuedCertificate, CaError> {
        self.sign_csr_at(csr_pem, identity, requested_ttl_secs, now_utc())
    }

    /// [`sign_csr`](Self::sign_csr) with an explicit clock.
    pub fn sign_csr_at(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        requested_ttl_secs: i64,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, CaError> {
        self.issue(
            csr_pem,
            identity,
            requested_ttl_secs,
            &ExtraSans::default(),
            now,
        )
    }

    /// Like [`sign_csr`](Self::sign_csr), with DNS and IP SANs after the identity: for the
    /// control plane's own serving certificate (`istiod.istio-system.svc`, `localhost`,
    /// `127.0.0.1`...). Workload certificates carry the identity only; use `sign_csr` for them.
    pub fn sign_csr_with_extra_sans(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        requested_ttl_secs: i64,
        extra: &ExtraSans,
    ) -> Result<IssuedCertificate, CaError> {
        self.issue(csr_pem, identity, requested_ttl_secs, extra, now_utc())
    }

    fn issue(
        &self,
        csr_pem: &str,
        identity: &SpiffeId,
        requested_ttl_secs: i64,
        extra: &ExtraSans,
        now: OffsetDateTime,
    ) -> Result<IssuedCertificate, CaError> {
        let extra_sans = extra.to_san_types()?;
        let td = identity.trust_domain_name();
        if td != self.options.trust_domain.as_str()
            && !self
                .options
                .trust_domain_aliases
                .iter()
                .any(|a| a.as_str() == td)
        {
            let mut allowed = vec![self.options.trust_domain.to_string()];
            allowed.extend(
                self.options
                    .trust_domain_aliases
                    .iter()
                    .map(|t| t.to_string()),
            );
            return Err(CaError::ForeignTrustDomain {
                identity: identity.clone(),
                allowed: allowed.join(", "),
            });
        }
        let max_secs = self.options.max_ttl.as_secs() as i64;
        let ttl_secs = if requested_ttl_secs <= 0 {
            self.options.default_ttl.as_secs() as i64
        } else if requested_ttl_secs > max_secs {
            return Err(CaError::TtlTooLong {
                requested_secs: requested_ttl_secs,
                max_secs,
            });
        } else {
            requested_ttl_secs
        };
        if self.revocations.is_identity_revoked(identity)? {
            return Err(CaError::IdentityRevoked {
                identity: identity.clone(),
            });
        }
        let public_key = csr::public_key_of(csr_pem)?;

        let state = self.state.load();
        let signer = &state.signer;
        if signer.chain_not_after <= now {
            // The CA (or a certificate above it) expired while running: issue nothing.
            return Err(CaError::Expired {
                path: signer.source.clone(),
                subject: signer.subject.clone(),
                not_after: signer.chain_not_after,
            });
        }
        let not_before = now - self.options.backdate;
        let not_after = (now + time::Duration::seconds(ttl_secs)).min(signer.chain_not_after);
        let serial = Serial::random();
        let leaf = signer.sign_leaf(
            &public_key,
            identity,
            &extra_sans,
            &serial,
            not_before,
            not_after,
        )?;
        // Second-precision, as encoded.
        let not_before = not_before.replace_nanosecond(0).unwrap_or(not_before);
        let not_after = not_after.replace_nanosecond(0).unwrap_or(not_after);

        self.issued.record(
            IssuedRecord {
                serial: serial.clone(),
                identity: identity.clone(),
                not_after: not_after.unix_timestamp(),
            },
            now,
        )?;
        let mut chain_pem = Vec::with_capacity(1 + signer.chain_pem.len());
        chain_pem.push(x509::cert_to_pem(&leaf));
        chain_pem.extend(signer.chain_pem.iter().cloned());
        Ok(IssuedCertificate {
            chain_pem,
            serial,
            not_before,
            not_after,
            identity: identity.clone(),
        })
    }

    /// Every trusted root, PEM, concatenated; the active root first. This is what workloads get
    /// as `root-cert.pem` (Istio's `istio-ca-root-cert` ConfigMap).
    pub fn root_bundle_pem(&self) -> String {
        self.state.load().bundle_pem.clone()
    }

    /// Every trusted root, DER, the active root first.
    pub fn root_bundle_der(&self) -> Vec<CertificateDer<'static>> {
        self.state.load().bundle_der.clone()
    }

    /// The roots of the bundle with their role.
    pub fn roots(&self) -> Vec<RootInfo> {
        self.state.load().roots.clone()
    }

    /// The signing CA's chain, PEM per certificate: the signing certificate first, the root last.
    pub fn signing_chain_pem(&self) -> Vec<String> {
        self.state.load().signer.chain_pem.clone()
    }

    /// Re-reads the CA files and swaps them in if every check passes; on error the CA keeps
    /// signing with what it had. Use after replacing plugin files (rotation).
    pub fn reload(&self) -> Result<(), CaError> {
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_locked(now_utc())
    }

    fn reload_locked(&self, now: OffsetDateTime) -> Result<(), CaError> {
        let stamp = files_stamp(&self.mode);
        let state = load_state(&self.mode, &self.options, now)?;
        self.state.store(Arc::new(state));
        *self.files_stamp.lock().unwrap_or_else(|p| p.into_inner()) = stamp;
        Ok(())
    }

    /// Reloads (as [`reload`](Self::reload)) only if a CA file changed since the last load:
    /// cheap enough to call every few seconds, so a running control plane follows a replaced
    /// plugin secret or a rotation done by a command beside it. Returns whether it reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, CaError> {
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let current = files_stamp(&self.mode);
        if *self.files_stamp.lock().unwrap_or_else(|p| p.into_inner()) == current {
            return Ok(false);
        }
        self.reload_locked(now_utc())?;
        Ok(true)
    }

    fn self_signed_layout(&self, operation: &'static str) -> Result<selfsigned::Layout, CaError> {
        match &self.mode {
            CaMode::SelfSigned { dir } => Ok(selfsigned::Layout { dir: dir.clone() }),
            CaMode::Plugin { .. } => Err(CaError::NotSelfSigned { operation }),
        }
    }

    /// Istio's hourly root check: re-issues the self-signed root with the same key when less
    /// than 20% of its life remains at `now`, and drops expired earlier roots. Returns the new
    /// root's serial when it re-issued. A plugin CA is left alone (`Ok(None)`).
    pub fn maybe_reissue_root(&self, now: OffsetDateTime) -> Result<Option<Serial>, CaError> {
        let CaMode::SelfSigned { .. } = &self.mode else {
            return Ok(None);
        };
        let layout = self.self_signed_layout("re-issuing the root")?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let reissued = selfsigned::reissue_if_due(&layout, &self.options, now)?;
        let expired = self.state.load().roots.iter().any(|r| r.not_after < now);
        if reissued.is_some() || expired {
            self.reload_locked(now)?;
        }
        Ok(reissued)
    }

    /// Rotation step 1: generates a new root (new key) and adds it to the trust bundle; the CA
    /// keeps signing with the current root. Publish the new bundle everywhere, then activate.
    pub fn stage_root(&self, algorithm: KeyAlgorithm) -> Result<RootInfo, CaError> {
        let layout = self.self_signed_layout("staging a root")?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let now = now_utc();
        let serial = selfsigned::stage(&layout, &self.options, algorithm, now)?;
        self.reload_locked(now)?;
        self.root_info(&serial)
    }

    /// Rotation step 2: the staged root becomes the signing root; the previous root stays in
    /// the bundle so that certificates it issued keep verifying.
    pub fn activate_staged_root(&self) -> Result<RootInfo, CaError> {
        let layout = self.self_signed_layout("activating the staged root")?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        let serial = selfsigned::activate(&layout)?;
        self.reload_locked(now_utc())?;
        self.root_info(&serial)
    }

    /// Steps 1 and 2 at once: a new root signs from now on, the old one stays trusted.
    pub fn rotate_root(&self, algorithm: KeyAlgorithm) -> Result<RootInfo, CaError> {
        self.stage_root(algorithm)?;
        self.activate_staged_root()
    }

    /// Rotation step 3: removes a non-active root from the bundle (once every certificate it
    /// issued has expired), or cancels a staged root.
    pub fn retire_root(&self, serial: &Serial) -> Result<(), CaError> {
        let layout = self.self_signed_layout("retiring a root")?;
        let _admin = self.admin.lock().unwrap_or_else(|p| p.into_inner());
        selfsigned::retire(&layout, serial)?;
        self.reload_locked(now_utc())
    }

    fn root_info(&self, serial: &Serial) -> Result<RootInfo, CaError> {
        self.state
            .load()
            .roots
            .iter()
            .find(|r| &r.serial == serial)
            .cloned()
            .ok_or_else(|| CaError::UnknownRoot {
                serial: serial.clone(),
            })
    }

    // ---- revocation ----

    /// Revokes one certificate. Returns `false` if it was already revoked.
    pub fn revoke_serial(&self, serial: &Serial) -> Result<bool, CaError> {
        let rec = self.issued.find(serial);
        self.revocations.revoke_serial(
            serial,
            rec.as_ref()
                .and_then(|r| OffsetDateTime::from_unix_timestamp(r.not_after).ok()),
            rec.as_ref().map(|r| &r.identity),
            now_utc(),
        )
    }

    /// Revokes an identity: every unexpired certificate issued to it is revoked, and nothing is
    /// issued to it until [`unrevoke_identity`](Self::unrevoke_identity). Returns the serials
    /// newly revoked.
    pub fn revoke_identity(&self, identity: &SpiffeId) -> Result<Vec<Serial>, CaError> {
        let now = now_utc();
        let certs = self.issued.unexpired_for(identity, now);
        self.revocations.revoke_identity(identity, &certs, now)
    }

    /// Lets the CA issue to `identity` again (its revoked certificates stay revoked).
    pub fn unrevoke_identity(&self, identity: &SpiffeId) -> Result<bool, CaError> {
        self.revocations.unrevoke_identity(identity)
    }

    /// Whether a serial is revoked.
    pub fn is_serial_revoked(&self, serial: &Serial) -> Result<bool, CaError> {
        self.revocations.is_serial_revoked(serial)
    }

    /// Whether an identity is revoked.
    pub fn is_identity_revoked(&self, identity: &SpiffeId) -> Result<bool, CaError> {
        self.revocations.is_identity_revoked(identity)
    }

    /// The current revocation list.
    pub fn revocation_list(&self) -> Result<RevocationList, CaError> {
        Ok(self.revocations.snapshot()?.0)
    }

    /// The issued-certificate log.
    pub fn issued_log(&self) -> &IssuedLog {
        &self.issued
    }

    /// The CRL of the signing CA, listing every revoked unexpired serial. Cached; regenerated
    /// (with the next CRL number) when the revocations change or half its validity has passed.
    pub fn crl(&self) -> Result<Arc<Crl>, CaError> {
        self.crl_at(now_utc())
    }

    /// [`crl`](Self::crl) with an explicit clock.
    pub fn crl_at(&self, now: OffsetDateTime) -> Result<Arc<Crl>, CaError> {
        let signer = self.state.load().signer.clone();
        self.crl_for(&signer, now)
    }

    /// The CRL, DER.
    pub fn crl_der(&self) -> Result<Vec<u8>, CaError> {
        Ok(self.crl()?.der.clone())
    }

    /// The CRL, PEM.
    pub fn crl_pem(&self) -> Result<String, CaError> {
        Ok(self.crl()?.pem.clone())
    }

    /// Every CRL to publish: the signing CA's, those of earlier self-signed roots whose keys are
    /// kept (for certificates they issued), and a plugin `ca-crl.pem` as provided.
    pub fn crls(&self) -> Result<Vec<Arc<Crl>>, CaError> {
        let now = now_utc();
        let state = self.state.load();
        let mut out = vec![self.crl_for(&state.signer, now)?];
        for s in &state.crl_signers {
            out.push(self.crl_for(s, now)?);
        }
        if let Some(c) = &state.plugin_crl {
            out.push(c.clone());
        }
        Ok(out)
    }

    fn crl_for(&self, signer: &Signer, now: OffsetDateTime) -> Result<Arc<Crl>, CaError> {
        let (list, generation) = self.revocations.snapshot()?;
        let mut cache = self.crl_cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((g, crl)) = cache.get(&signer.serial) {
            let fresh_until = crl.this_update + self.options.crl_validity / 2;
            if *g == generation && now < fresh_until && now >= crl.this_update {
                return Ok(crl.clone());
            }
        }
        if !signer.may_sign_crls {
            return Err(CaError::CrlSignNotAllowed {
                subject: signer.subject.clone(),
            });
        }
        let number = self.revocations.next_crl_number()?;
        let this_update = now.replace_nanosecond(0).unwrap_or(now);
        let revoked_certs = list
            .unexpired_serials(now)
            .map(|s| RevokedCertParams {
                serial_number: SerialNumber::from_slice(s.serial.as_bytes()),
                revocation_time: OffsetDateTime::from_unix_timestamp(s.revoked_at)
                    .unwrap_or(this_update),
                reason_code: None,
                invalidity_date: None,
            })
            .collect();
        let params = CertificateRevocationListParams {
            this_update,
            next_update: this_update + self.options.crl_validity,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::PreSpecified(signer.key_id.clone()),
        };
        let crl = params.signed_by(&signer.issuer).map_err(CaError::sign)?;
        let crl = Arc::new(Crl::from_der(crl.der().as_ref().to_vec()).map_err(CaError::sign)?);
        cache.insert(signer.serial.clone(), (generation, crl.clone()));
        Ok(crl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<CertificateAuthority>();
        assert_send_sync::<Arc<CertificateAuthority>>();
    }
}
