//! The self-signed mode: a root generated on first start, persisted in the CA directory, reloaded
//! with the same key on every start, re-issued (same key) when 20% of its life remains, and
//! rotated to a new key in stages.
//!
//! Directory layout (every write is atomic: temporary file + rename):
//!
//! ```text
//! root-cert.pem          the active signing root (0644)
//! root-key.pem           its private key (0600)
//! trust-bundle.pem       every trusted root, the active one first (0644; derived, rewritten on change)
//! roots/staged-cert.pem  a new root staged for rotation, trusted but not yet signing
//! roots/staged-key.pem
//! roots/<serial>-cert.pem  earlier roots still trusted (their key too, if it differs from the active key)
//! roots/<serial>-key.pem
//! ```

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rcgen::{DistinguishedName, DnType, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::checks::{self, check_key_matches, parse};
use super::signer::{ca_params, dn_from_x509};
use super::{CaError, CaOptions, RootInfo, RootStatus, Signer};
use crate::fsutil::{KEY_MODE, PUBLIC_MODE, write_atomic};
use crate::keys::{self, KeyAlgorithm};
use crate::x509::{self, Serial};

/// Paths of a self-signed CA directory.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) dir: PathBuf,
}

impl Layout {
    pub(crate) fn root_cert(&self) -> PathBuf {
        self.dir.join("root-cert.pem")
    }
    pub(crate) fn root_key(&self) -> PathBuf {
        self.dir.join("root-key.pem")
    }
    pub(crate) fn bundle(&self) -> PathBuf {
        self.dir.join("trust-bundle.pem")
    }
    fn roots_dir(&self) -> PathBuf {
        self.dir.join("roots")
    }
    fn staged_cert(&self) -> PathBuf {
        self.roots_dir().join("staged-cert.pem")
    }
    fn staged_key(&self) -> PathBuf {
        self.roots_dir().join("staged-key.pem")
    }
    fn previous_cert(&self, serial: &Serial) -> PathBuf {
        self.roots_dir().join(format!("{serial}-cert.pem"))
    }
    fn previous_key(&self, serial: &Serial) -> PathBuf {
        self.roots_dir().join(format!("{serial}-key.pem"))
    }
}

/// The loaded self-signed CA.
pub(crate) struct Loaded {
    pub(crate) signer: Signer,
    /// Earlier roots whose key differs from the active key (they sign CRLs for their leaves).
    pub(crate) crl_signers: Vec<Signer>,
    pub(crate) bundle: Vec<CertificateDer<'static>>,
    pub(crate) roots: Vec<RootInfo>,
}

fn write(path: &Path, contents: &str, mode: u32) -> Result<(), CaError> {
    write_atomic(path, contents.as_bytes(), mode).map_err(|e| CaError::io("writing", path, e))
}

fn mkdir(dir: &Path) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| CaError::io("creating directory", dir, e))
}

/// Generates a root certificate for `key`, subject `O=<trust domain>, CN=<cn>`.
pub(crate) fn make_root(
    key: &KeyPair,
    subject: DistinguishedName,
    options: &CaOptions,
    now: OffsetDateTime,
) -> Result<CertificateDer<'static>, CaError> {
    let params = ca_params(
        subject,
        &Serial::random(),
        now - options.backdate,
        now + options.root_ttl,
        None,
    );
    params
        .self_signed(key)
        .map(|c| c.der().clone())
        .map_err(CaError::sign)
}

fn fresh_subject(options: &CaOptions) -> DistinguishedName {
    let mut nonce = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut nonce);
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, options.trust_domain.as_str());
    dn.push(
        DnType::CommonName,
        format!(
            "Warden mesh root {}",
            nonce.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    );
    dn
}

fn load_key(path: &Path) -> Result<KeyPair, CaError> {
    let pem = checks::read_text(path, "a root private key")?;
    Ok(keys::key_pair_from_pem(&pem, &path.display().to_string())?)
}

fn load_one_cert(path: &Path) -> Result<CertificateDer<'static>, CaError> {
    Ok(checks::read_certs(path)?.remove(0))
}

fn key_matches(key: &KeyPair, der: &CertificateDer<'_>) -> bool {
    x509::parse(der)
        .is_ok_and(|c| key.public_key_raw() == &c.public_key().subject_public_key.data[..])
}

/// Loads the directory, creating the root on first start and finishing an interrupted rotation.
pub(crate) fn load_or_create(
    layout: &Layout,
    options: &CaOptions,
    now: OffsetDateTime,
) -> Result<Loaded, CaError> {
    mkdir(&layout.dir)?;
    let (cert_path, key_path) = (layout.root_cert(), layout.root_key());
    match (cert_path.exists(), key_path.exists()) {
        (false, false) => {
            let key = options.root_key.generate()?;
            let cert = make_root(&key, fresh_subject(options), options, now)?;
            write(&key_path, &key.serialize_pem(), KEY_MODE)?;
            write(&cert_path, &x509::cert_to_pem(&cert), PUBLIC_MODE)?;
            tracing::info!(dir = %layout.dir.display(), key = %options.root_key, "generated a new self-signed mesh root");
        }
        (false, true) => {
            // Interrupted first start: the key was written, the certificate was not.
            let key = load_key(&key_path)?;
            let cert = make_root(&key, fresh_subject(options), options, now)?;
            write(&cert_path, &x509::cert_to_pem(&cert), PUBLIC_MODE)?;
        }
        (true, false) => {
            return Err(CaError::MissingFile {
                path: key_path,
                what: "the private key of root-cert.pem (refusing to replace an existing root)",
            });
        }
        (true, true) => {}
    }
    let key = load_key(&key_path)?;
    let mut cert = load_one_cert(&cert_path)?;
    if !key_matches(&key, &cert) {
        // An activation interrupted between its two renames: the staged certificate fits.
        let staged = layout.staged_cert();
        if staged.exists() && key_matches(&key, &load_one_cert(&staged)?) {
            fs::rename(&staged, &cert_path).map_err(|e| CaError::io("renaming", &staged, e))?;
            cert = load_one_cert(&cert_path)?;
        } else {
            let parsed = parse(&cert, &cert_path, 0)?;
            check_key_matches(&key, &parsed, &key_path, &cert_path)?;
        }
    }
    let parsed = parse(&cert, &cert_path, 0)?;
    if !x509::is_self_signed(&parsed) {
        return Err(CaError::RootNotSelfSigned {
            path: cert_path,
            subject: x509::subject_text(&parsed),
        });
    }
    checks::check_ca(&parsed, &cert_path, now)?;
    let active_info = RootInfo::of(&parsed, RootStatus::Active, keys::describe_key(&key));
    drop(parsed);

    let mut bundle = vec![cert.clone()];
    let mut roots = vec![active_info];
    let mut crl_signers = Vec::new();

    // A staged root, if any.
    let (sc, sk) = (layout.staged_cert(), layout.staged_key());
    match (sc.exists(), sk.exists()) {
        (true, true) => {
            let skey = load_key(&sk)?;
            let sder = load_one_cert(&sc)?;
            let sparsed = parse(&sder, &sc, 0)?;
            check_key_matches(&skey, &sparsed, &sk, &sc)?;
            checks::check_ca(&sparsed, &sc, now)?;
            roots.push(RootInfo::of(
                &sparsed,
                RootStatus::Staged,
                keys::describe_key(&skey),
            ));
            bundle.push(sder.clone());
        }
        (false, true) => {
            // An interrupted staging, or one in progress in another process (the key is
            // written first): ignore the key, never remove it; the next staging replaces it.
            tracing::debug!(file = %sk.display(), "ignoring a staged root key without its certificate");
        }
        (true, false) => {
            return Err(CaError::MissingFile {
                path: sk,
                what: "the private key of the staged root",
            });
        }
        (false, false) => {}
    }

    // Earlier roots.
    let mut previous = Vec::new();
    if let Ok(entries) = fs::read_dir(layout.roots_dir()) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(serial) = name.strip_suffix("-cert.pem") else {
                continue;
            };
            if serial == "staged" {
                continue;
            }
            let Ok(serial) = serial.parse::<Serial>() else {
                continue;
            };
            previous.push(serial);
        }
    }
    let mut prev_loaded = Vec::new();
    for serial in previous {
        let cp = layout.previous_cert(&serial);
        let kp = layout.previous_key(&serial);
        let der = load_one_cert(&cp)?;
        let p = parse(&der, &cp, 0)?;
        if x509::not_after(&p) < now {
            tracing::info!(file = %cp.display(), "removing an expired earlier root");
            let _ = fs::remove_file(&cp);
            let _ = fs::remove_file(&kp);
            continue;
        }
        let pkey = if kp.exists() {
            Some(load_key(&kp)?)
        } else {
            None
        };
        let desc = match &pkey {
            Some(k) => keys::describe_key(k),
            None if key_matches(&key, &der) => keys::describe_key(&key),
            None => "unknown (key not kept)",
        };
        prev_loaded.push((x509::not_after(&p), der.clone(), cp.clone(), pkey));
        roots.push(RootInfo::of(&p, RootStatus::Previous, desc));
    }
    prev_loaded.sort_by_key(|p| std::cmp::Reverse(p.0));
    for (_, der, path, pkey) in prev_loaded {
        if !bundle.contains(&der) {
            bundle.push(der.clone());
        }
        if let Some(pkey) = pkey
            && pkey.public_key_raw() != key.public_key_raw()
        {
            crl_signers.push(Signer::new(vec![der], pkey, &path)?);
        }
    }

    let signer = Signer::new(vec![cert], key, &cert_path)?;
    write_bundle_if_changed(layout, &bundle)?;
    Ok(Loaded {
        signer,
        crl_signers,
        bundle,
        roots,
    })
}

fn write_bundle_if_changed(layout: &Layout, bundle: &[CertificateDer<'_>]) -> Result<(), CaError> {
    let text: String = bundle.iter().map(|d| x509::cert_to_pem(d)).collect();
    let path = layout.bundle();
    if fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        write(&path, &text, PUBLIC_MODE)?;
    }
    Ok(())
}

/// Re-issues the active root with the same key and subject when less than `fraction` of its
/// lifetime remains. The old certificate stays trusted until it expires. Returns the new root.
pub(crate) fn reissue_if_due(
    layout: &Layout,
    options: &CaOptions,
    now: OffsetDateTime,
) -> Result<Option<Serial>, CaError> {
    let cert_path = layout.root_cert();
    let der = load_one_cert(&cert_path)?;
    let old = parse(&der, &cert_path, 0)?;
    let (nb, na) = (x509::not_before(&old), x509::not_after(&old));
    let lifetime = na - nb;
    let remaining = na - now;
    if remaining > lifetime * options.root_reissue_fraction {
        return Ok(None);
    }
    let key = load_key(&layout.root_key())?;
    let subject = dn_from_x509(old.subject()).map_err(|reason| CaError::UnsupportedCaName {
        path: cert_path.clone(),
        subject: x509::subject_text(&old),
        reason,
    })?;
    let serial = Serial::random();
    let params = ca_params(
        subject,
        &serial,
        now - options.backdate,
        now + options.root_ttl,
        None,
    );
    // Signed through an issuer built from the old certificate so the issuer name is
    // byte-for-byte the subject (self-issued, same key: old leaves verify against it).
    let issuer = Issuer::from_ca_cert_der(&der, &key).map_err(CaError::sign)?;
    let new = params.signed_by(&key, &issuer).map_err(CaError::sign)?;
    mkdir(&layout.roots_dir())?;
    write(
        &layout.previous_cert(&Serial::of(&old)),
        &x509::cert_to_pem(&der),
        PUBLIC_MODE,
    )?;
    write(&cert_path, &x509::cert_to_pem(new.der()), PUBLIC_MODE)?;
    tracing::info!(old = %Serial::of(&old), new = %serial, "re-issued the self-signed root with the same key");
    Ok(Some(serial))
}

/// Stages a new root with a new key: trusted (in the bundle) but not signing yet.
pub(crate) fn stage(
    layout: &Layout,
    options: &CaOptions,
    algorithm: KeyAlgorithm,
    now: OffsetDateTime,
) -> Result<Serial, CaError> {
    mkdir(&layout.roots_dir())?;
    let key = algorithm.generate()?;
    let cert = make_root(&key, fresh_subject(options), options, now)?;
    write(&layout.staged_key(), &key.serialize_pem(), KEY_MODE)?;
    write(
        &layout.staged_cert(),
        &x509::cert_to_pem(&cert),
        PUBLIC_MODE,
    )?;
    let parsed = x509::parse(&cert).map_err(|reason| CaError::SelfCheck { reason })?;
    Ok(Serial::of(&parsed))
}

/// Makes the staged root the active one; the previous active root stays trusted.
pub(crate) fn activate(layout: &Layout) -> Result<Serial, CaError> {
    let (sc, sk) = (layout.staged_cert(), layout.staged_key());
    if !sc.exists() || !sk.exists() {
        return Err(CaError::NoStagedRoot);
    }
    let old = load_one_cert(&layout.root_cert())?;
    let old_serial = Serial::of(&parse(&old, &layout.root_cert(), 0)?);
    let old_key = checks::read_text(&layout.root_key(), "the active root key")?;
    write(&layout.previous_key(&old_serial), &old_key, KEY_MODE)?;
    write(
        &layout.previous_cert(&old_serial),
        &x509::cert_to_pem(&old),
        PUBLIC_MODE,
    )?;
    let new = load_one_cert(&sc)?;
    let new_serial = Serial::of(&parse(&new, &sc, 0)?);
    // Key first: an interruption between the renames is finished on the next load.
    fs::rename(&sk, layout.root_key()).map_err(|e| CaError::io("renaming", &sk, e))?;
    if let Err(e) = fs::rename(&sc, layout.root_cert()) {
        // A control plane loading the CA between the two renames completes the activation
        // itself (see `load_or_create`); that is success too.
        let completed = e.kind() == std::io::ErrorKind::NotFound
            && load_one_cert(&layout.root_cert()).is_ok_and(|c| c == new);
        if !completed {
            return Err(CaError::io("renaming", &sc, e));
        }
    }
    Ok(new_serial)
}

/// Removes a non-active root from the bundle (a staged one or an earlier one).
pub(crate) fn retire(layout: &Layout, serial: &Serial) -> Result<(), CaError> {
    let active = load_one_cert(&layout.root_cert())?;
    if Serial::of(&parse(&active, &layout.root_cert(), 0)?) == *serial {
        return Err(CaError::RetireActiveRoot {
            serial: serial.clone(),
        });
    }
    let sc = layout.staged_cert();
    if sc.exists() && Serial::of(&parse(&load_one_cert(&sc)?, &sc, 0)?) == *serial {
        for p in [layout.staged_cert(), layout.staged_key()] {
            fs::remove_file(&p).map_err(|e| CaError::io("removing", &p, e))?;
        }
        return Ok(());
    }
    let cp = layout.previous_cert(serial);
    if !cp.exists() {
        return Err(CaError::UnknownRoot {
            serial: serial.clone(),
        });
    }
    fs::remove_file(&cp).map_err(|e| CaError::io("removing", &cp, e))?;
    let kp = layout.previous_key(serial);
    if kp.exists() {
        fs::remove_file(&kp).map_err(|e| CaError::io("removing", &kp, e))?;
    }
    Ok(())
}
