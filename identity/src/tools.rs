//! What `warden certs` does: make a root CA and per-cluster intermediates (the plugin CA files,
//! like Istio's `tools/certs`), a workload certificate for a VM or a test, and inspect a
//! certificate file. The CLI only parses flags and prints.

use std::fmt::{self, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{DistinguishedName, DnType, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use crate::ca::{self, CaError, CaOptions, CertificateAuthority, IssuedCertificate};
use crate::fsutil::{KEY_MODE, PUBLIC_MODE, write_atomic};
use crate::keys::{self, KeyAlgorithm};
use crate::spiffe::SpiffeId;
use crate::x509::{self, Serial};

/// Why a `warden certs` command failed.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A CA check or signing failed.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// A key could not be generated or loaded.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// An output file exists and `--force` was not given.
    #[error("{path} already exists (use --force to overwrite)")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// An argument is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Options of `warden certs root-ca`.
#[derive(Debug, Clone)]
pub struct RootCaRequest {
    /// Key algorithm (Istio's tools/certs: RSA 4096).
    pub key: KeyAlgorithm,
    /// Validity in days (3650).
    pub days: u32,
    /// Organization (`Istio`).
    pub organization: String,
    /// Common name (`Root CA`).
    pub common_name: String,
    /// Overwrite existing files.
    pub force: bool,
}

impl Default for RootCaRequest {
    fn default() -> Self {
        Self {
            key: KeyAlgorithm::Rsa4096,
            days: 3650,
            organization: "Istio".to_owned(),
            common_name: "Root CA".to_owned(),
            force: false,
        }
    }
}

/// Options of `warden certs intermediate`.
#[derive(Debug, Clone)]
pub struct IntermediateRequest {
    /// The cluster name (the certificate's `L=` attribute, like Istio's tools/certs).
    pub cluster: String,
    /// Key algorithm (RSA 4096).
    pub key: KeyAlgorithm,
    /// Validity in days (730).
    pub days: u32,
    /// Organization (`Istio`).
    pub organization: String,
    /// Overwrite existing files.
    pub force: bool,
}

impl IntermediateRequest {
    /// Istio's defaults for `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            cluster: cluster.to_owned(),
            key: KeyAlgorithm::Rsa4096,
            days: 730,
            organization: "Istio".to_owned(),
            force: false,
        }
    }
}

/// Options of `warden certs workload`.
#[derive(Debug, Clone)]
pub struct WorkloadRequest {
    /// The identity to certify.
    pub identity: SpiffeId,
    /// Certificate lifetime.
    pub ttl: Duration,
    /// Key algorithm (ECDSA P-256).
    pub key: KeyAlgorithm,
    /// Overwrite existing files.
    pub force: bool,
}

fn check_writable(paths: &[PathBuf], force: bool) -> Result<(), ToolError> {
    if !force && let Some(p) = paths.iter().find(|p| p.exists()) {
        return Err(ToolError::Exists { path: p.clone() });
    }
    Ok(())
}

fn mkdir(dir: &Path) -> Result<(), ToolError> {
    std::fs::create_dir_all(dir).map_err(|e| CaError::io("creating directory", dir, e).into())
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), ToolError> {
    write_atomic(path, text.as_bytes(), mode).map_err(|e| CaError::io("writing", path, e).into())
}

fn days(n: u32) -> time::Duration {
    time::Duration::days(i64::from(n))
}

/// Makes a self-signed root CA in `out`: `root-cert.pem` (0644) and `root-key.pem` (0600).
/// CA:TRUE, keyCertSign + cRLSign. Returns the files written.
pub fn root_ca(out: &Path, req: &RootCaRequest) -> Result<Vec<PathBuf>, ToolError> {
    if req.days == 0 {
        return Err(ToolError::Invalid("--days must be at least 1".to_owned()));
    }
    let (cert_path, key_path) = (out.join("root-cert.pem"), out.join("root-key.pem"));
    check_writable(&[cert_path.clone(), key_path.clone()], req.force)?;
    mkdir(out)?;
    let key = req.key.generate()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, req.organization.as_str());
    dn.push(DnType::CommonName, req.common_name.as_str());
    let now = OffsetDateTime::now_utc();
    let params = ca::ca_params(
        dn,
        &Serial::random(),
        now - time::Duration::minutes(5),
        now + days(req.days),
        None,
    );
    let cert = params.self_signed(&key).map_err(CaError::sign)?;
    write(&key_path, &key.serialize_pem(), KEY_MODE)?;
    write(&cert_path, &cert.pem(), PUBLIC_MODE)?;
    Ok(vec![cert_path, key_path])
}

fn load_root_dir(root_dir: &Path) -> Result<(CertificateDer<'static>, String, KeyPair), ToolError> {
    let cert_path = root_dir.join("root-cert.pem");
    let key_path = root_dir.join("root-key.pem");
    let certs = ca::read_certs(&cert_path)?;
    let bundle_text: String = certs.iter().map(|d| x509::cert_to_pem(d)).collect();
    let key_pem = std::fs::read_to_string(&key_path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            CaError::MissingFile {
                path: key_path.clone(),
                what: "the root private key",
            }
        } else {
            CaError::io("reading", &key_path, e)
        }
    })?;
    let key = keys::key_pair_from_pem(&key_pem, &key_path.display().to_string())?;
    // The root is the certificate of the file that matches the key (normally the first).
    let root = certs
        .iter()
        .find(|d| {
            x509::parse(d)
                .is_ok_and(|c| key.public_key_raw() == &c.public_key().subject_public_key.data[..])
        })
        .cloned()
        .ok_or(CaError::KeyMismatch {
            key_path: key_path.clone(),
            cert_path: cert_path.clone(),
        })?;
    let parsed = x509::parse(&root).map_err(|reason| CaError::BadCertificate {
        path: cert_path.clone(),
        index: 0,
        reason,
    })?;
    ca::check_ca(&parsed, &cert_path, OffsetDateTime::now_utc())?;
    Ok((root, bundle_text, key))
}

/// Makes a per-cluster intermediate CA signed by the root in `root_dir` and writes Istio's
/// plugin CA files to `out`: `ca-cert.pem`, `ca-key.pem` (0600), `cert-chain.pem`
/// (ca-cert then root) and `root-cert.pem`. CA:TRUE pathlen:0. The result is loaded back as a
/// plugin CA to prove it works. Returns the files written.
pub fn intermediate(
    root_dir: &Path,
    out: &Path,
    req: &IntermediateRequest,
) -> Result<Vec<PathBuf>, ToolError> {
    if req.days == 0 {
        return Err(ToolError::Invalid("--days must be at least 1".to_owned()));
    }
    if req.cluster.is_empty() {
        return Err(ToolError::Invalid("--cluster must not be empty".to_owned()));
    }
    let names = [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ];
    let paths: Vec<PathBuf> = names.iter().map(|n| out.join(n)).collect();
    check_writable(&paths, req.force)?;
    let (root_der, bundle_text, root_key) = load_root_dir(root_dir)?;
    let root = x509::parse(&root_der).map_err(CaError::sign)?;
    let now = OffsetDateTime::now_utc();
    let not_after = (now + days(req.days)).min(x509::not_after(&root));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, req.organization.as_str());
    dn.push(DnType::CommonName, "Intermediate CA");
    dn.push(DnType::LocalityName, req.cluster.as_str());
    let mut params = ca::ca_params(
        dn,
        &Serial::random(),
        now - time::Duration::minutes(5),
        not_after,
        Some(0),
    );
    params.use_authority_key_identifier_extension = true;
    let key = req.key.generate()?;
    let issuer = Issuer::from_ca_cert_der(&root_der, &root_key).map_err(CaError::sign)?;
    let cert = params.signed_by(&key, &issuer).map_err(CaError::sign)?;
    mkdir(out)?;
    let cert_pem = cert.pem();
    write(&paths[1], &key.serialize_pem(), KEY_MODE)?;
    write(&paths[0], &cert_pem, PUBLIC_MODE)?;
    write(
        &paths[2],
        &format!("{cert_pem}{}", x509::cert_to_pem(&root_der)),
        PUBLIC_MODE,
    )?;
    write(&paths[3], &bundle_text, PUBLIC_MODE)?;
    CertificateAuthority::plugin(out, None, CaOptions::default())?;
    Ok(paths)
}

/// Issues a workload certificate from the CA in `ca_dir` (a plugin CA directory, or a root from
/// [`root_ca`]) with a fresh key, and writes `cert-chain.pem` (leaf then intermediates),
/// `key.pem` (0600) and `root-cert.pem` (the trust bundle) to `out`.
pub fn workload(
    ca_dir: &Path,
    out: &Path,
    req: &WorkloadRequest,
) -> Result<IssuedCertificate, ToolError> {
    let paths: Vec<PathBuf> = ["cert-chain.pem", "key.pem", "root-cert.pem"]
        .iter()
        .map(|n| out.join(n))
        .collect();
    check_writable(&paths, req.force)?;
    if req.ttl.is_zero() {
        return Err(ToolError::Invalid("--ttl must be positive".to_owned()));
    }
    let options = CaOptions {
        trust_domain: req.identity.trust_domain(),
        max_ttl: req.ttl.max(ca::DEFAULT_MAX_WORKLOAD_TTL),
        ..CaOptions::default()
    };
    let authority = CertificateAuthority::plugin(ca_dir, None, options)?;
    let key = req.key.generate()?;
    let csr = keys::csr_pem(&key, &req.identity)?;
    let ttl = i64::try_from(req.ttl.as_secs())
        .map_err(|_| ToolError::Invalid("--ttl is too large".to_owned()))?;
    let issued = authority.sign_csr(&csr, &req.identity, ttl)?;
    // The chain a workload presents: the leaf and the intermediates, not the self-signed root.
    let n = issued.chain_pem.len();
    let presented = if n > 1 {
        &issued.chain_pem[..n - 1]
    } else {
        &issued.chain_pem[..]
    };
    mkdir(out)?;
    write(&paths[1], &key.serialize_pem(), KEY_MODE)?;
    write(&paths[0], &presented.concat(), PUBLIC_MODE)?;
    write(&paths[2], &authority.root_bundle_pem(), PUBLIC_MODE)?;
    Ok(issued)
}

/// Parses a duration such as `24h`, `90d`, `30m`, `45s` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 24h, 90d, 30m, 3600s"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("invalid duration unit in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("duration {s:?} is too large"))
}

/// One certificate as `warden certs inspect` shows it.
#[derive(Debug, Clone)]
pub struct CertSummary {
    /// Subject (`<empty>` if empty).
    pub subject: String,
    /// Issuer.
    pub issuer: String,
    /// Serial.
    pub serial: Serial,
    /// notBefore.
    pub not_before: OffsetDateTime,
    /// notAfter.
    pub not_after: OffsetDateTime,
    /// Key type, e.g. `ECDSA P-256`.
    pub key: &'static str,
    /// URI SANs that are valid SPIFFE IDs.
    pub spiffe_ids: Vec<SpiffeId>,
    /// Other SANs (DNS, IP, other URIs), as text.
    pub other_sans: Vec<String>,
    /// Whether the SAN extension is critical.
    pub san_critical: bool,
    /// Extended key usages, by name.
    pub eku: Vec<&'static str>,
    /// `Some(pathlen)` for a CA certificate.
    pub ca: Option<Option<u32>>,
    /// Whether the certificate is self-signed.
    pub self_signed: bool,
}

impl CertSummary {
    fn of(cert: &X509Certificate<'_>) -> Self {
        use x509_parser::extensions::GeneralName;
        let mut spiffe_ids = Vec::new();
        let mut other_sans = Vec::new();
        let mut san_critical = false;
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            san_critical = san.critical;
            for n in &san.value.general_names {
                match n {
                    GeneralName::URI(u) => match SpiffeId::parse(u) {
                        Ok(id) => spiffe_ids.push(id),
                        Err(_) => other_sans.push(format!("URI:{u}")),
                    },
                    GeneralName::DNSName(d) => other_sans.push(format!("DNS:{d}")),
                    other => other_sans.push(other.to_string()),
                }
            }
        }
        let mut eku = Vec::new();
        if let Ok(Some(e)) = cert.extended_key_usage() {
            let e = e.value;
            for (on, name) in [
                (e.server_auth, "serverAuth"),
                (e.client_auth, "clientAuth"),
                (e.code_signing, "codeSigning"),
                (e.email_protection, "emailProtection"),
                (e.time_stamping, "timeStamping"),
                (e.ocsp_signing, "OCSPSigning"),
                (e.any, "any"),
            ] {
                if on {
                    eku.push(name);
                }
            }
        }
        Self {
            subject: x509::subject_text(cert),
            issuer: x509::issuer_text(cert),
            serial: Serial::of(cert),
            not_before: x509::not_before(cert),
            not_after: x509::not_after(cert),
            key: ca::key_type(cert),
            spiffe_ids,
            other_sans,
            san_critical,
            eku,
            ca: x509::ca_constraints(cert),
            self_signed: x509::is_self_signed(cert),
        }
    }
}

/// The verdict on a file's chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The chain verifies up to a root of the given root file.
    Verified {
        /// The root that anchors the chain.
        root_subject: String,
    },
    /// The chain does not verify.
    Failed(String),
    /// No root to verify against.
    NotChecked(String),
}

/// What `warden certs inspect` reports.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The inspected file.
    pub file: PathBuf,
    /// Its certificates, in file order.
    pub certificates: Vec<CertSummary>,
    /// The roots used for verification.
    pub root_file: Option<PathBuf>,
    /// The verdict.
    pub verification: Verification,
    /// The time of the inspection.
    pub now: OffsetDateTime,
}

/// Formats an instant as RFC 3339 in UTC, e.g. `2026-01-02T03:04:05Z`.
pub fn fmt_time(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn human(d: time::Duration) -> String {
    let secs = d.whole_seconds().unsigned_abs();
    let (days, hours, mins) = (secs / 86400, (secs % 86400) / 3600, (secs % 3600) / 60);
    if days > 0 {
        format!("{days}d {hours}h")
    } else if hours > 0 {
        format!("{hours}h {mins}m")
    } else {
        format!("{mins}m {}s", secs % 60)
    }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file: {}", self.file.display())?;
        for (i, c) in self.certificates.iter().enumerate() {
            let role = if i == 0 { "certificate" } else { "chain" };
            writeln!(f, "[{i}] {role}")?;
            let ids: Vec<&str> = c.spiffe_ids.iter().map(|s| s.as_str()).collect();
            writeln!(
                f,
                "  SPIFFE ID:  {}",
                if ids.is_empty() {
                    "-".to_owned()
                } else {
                    ids.join(", ")
                }
            )?;
            if !c.other_sans.is_empty() {
                writeln!(f, "  other SANs: {}", c.other_sans.join(", "))?;
            }
            if !c.spiffe_ids.is_empty() || !c.other_sans.is_empty() {
                writeln!(
                    f,
                    "  SAN critical: {}",
                    if c.san_critical { "yes" } else { "no" }
                )?;
            }
            writeln!(f, "  subject:    {}", c.subject)?;
            writeln!(f, "  issuer:     {}", c.issuer)?;
            writeln!(f, "  serial:     {}", c.serial)?;
            writeln!(f, "  not before: {}", fmt_time(c.not_before))?;
            let left = c.not_after - self.now;
            let remaining = if self.now < c.not_before {
                "NOT YET VALID".to_owned()
            } else if left.is_negative() {
                format!("EXPIRED {} ago", human(left))
            } else {
                format!("{} left", human(left))
            };
            writeln!(f, "  not after:  {} ({remaining})", fmt_time(c.not_after))?;
            writeln!(f, "  key:        {}", c.key)?;
            writeln!(
                f,
                "  EKU:        {}",
                if c.eku.is_empty() {
                    "-".to_owned()
                } else {
                    c.eku.join(", ")
                }
            )?;
            let ca = match c.ca {
                Some(Some(n)) => format!("yes (pathlen {n})"),
                Some(None) => "yes".to_owned(),
                None => "no".to_owned(),
            };
            writeln!(
                f,
                "  CA:         {ca}{}",
                if c.self_signed { ", self-signed" } else { "" }
            )?;
        }
        let mut line = String::new();
        match &self.verification {
            Verification::Verified { root_subject } => {
                let _ = write!(line, "chain: verified against {root_subject:?}");
            }
            Verification::Failed(e) => {
                let _ = write!(line, "chain: DOES NOT VERIFY: {e}");
            }
            Verification::NotChecked(why) => {
                let _ = write!(line, "chain: not verified ({why})");
            }
        }
        if let Some(r) = &self.root_file {
            let _ = write!(line, " [roots: {}]", r.display());
        }
        writeln!(f, "{line}")
    }
}

/// Inspects a PEM certificate file (a leaf, or a chain with the leaf first) and verifies it
/// against `root` (default: a `root-cert.pem` next to the file).
pub fn inspect(
    file: &Path,
    root: Option<&Path>,
    now: OffsetDateTime,
) -> Result<Inspection, ToolError> {
    let certs = ca::read_certs(file)?;
    let parsed: Vec<X509Certificate<'_>> = certs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            x509::parse(d).map_err(|reason| CaError::BadCertificate {
                path: file.to_owned(),
                index: i,
                reason,
            })
        })
        .collect::<Result<_, _>>()?;
    let certificates = parsed.iter().map(CertSummary::of).collect();
    let sibling = file
        .parent()
        .map(|d| d.join("root-cert.pem"))
        .filter(|p| p.exists() && p.canonicalize().ok() != file.canonicalize().ok());
    let root_file = root.map(Path::to_owned).or(sibling);
    let verification = match &root_file {
        None => Verification::NotChecked(
            "no --root given and no root-cert.pem next to the file".to_owned(),
        ),
        Some(rf) => {
            let roots = ca::read_certs(rf)?;
            verify_chain(&certs, &parsed, &roots, file, rf, now)
        }
    };
    Ok(Inspection {
        file: file.to_owned(),
        certificates,
        root_file,
        verification,
        now,
    })
}

fn verify_chain(
    certs: &[CertificateDer<'static>],
    parsed: &[X509Certificate<'_>],
    roots: &[CertificateDer<'static>],
    file: &Path,
    root_file: &Path,
    now: OffsetDateTime,
) -> Verification {
    let anchor_of = |last: &X509Certificate<'_>| {
        roots.iter().find_map(|r| {
            let rc = x509::parse(r).ok()?;
            (r.as_ref() == last.as_raw() || x509::check_link(last, &rc).is_ok())
                .then(|| x509::subject_text(&rc))
        })
    };
    if x509::ca_constraints(&parsed[0]).is_none() {
        // An end-entity certificate: verify the way rustls will.
        let inter = &certs[1..];
        let client = x509::verify_leaf(&certs[0], inter, roots, now, false);
        let server = x509::verify_leaf(&certs[0], inter, roots, now, true);
        return match (client, server) {
            (Err(e), Err(_)) => Verification::Failed(e),
            _ => {
                // Report the root that anchors the chain.
                let last = parsed.last().unwrap_or(&parsed[0]);
                let root_subject =
                    anchor_of(last).unwrap_or_else(|| "a root of the bundle".to_owned());
                Verification::Verified { root_subject }
            }
        };
    }
    // A CA certificate (e.g. ca-cert.pem or cert-chain.pem): check each link, then the root.
    for (i, c) in parsed.iter().enumerate() {
        if let Err(e) = ca::check_validity(c, file, now) {
            return Verification::Failed(e.to_string());
        }
        if let Some(next) = parsed.get(i + 1) {
            if let Err(e) = ca::check_issued_by(c, file, next, file) {
                return Verification::Failed(e.to_string());
            }
            if let Err(e) = ca::check_ca(next, file, now) {
                return Verification::Failed(e.to_string());
            }
        }
    }
    let last = parsed.last().unwrap_or(&parsed[0]);
    match anchor_of(last) {
        Some(root_subject) => Verification::Verified { root_subject },
        None => Verification::Failed(format!(
            "{}: the chain ends at {:?} (issued by {:?}), which is not signed by any root in {}",
            file.display(),
            x509::subject_text(last),
            x509::issuer_text(last),
            root_file.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_duration("90d").unwrap(),
            Duration::from_secs(90 * 86400)
        );
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("3600").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }
}
