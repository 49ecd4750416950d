//! Plugin CA: an operator-provided intermediate (Istio's `cacerts` secret layout), checked
//! thoroughly before it signs anything.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::checks::{self, check_ca, check_issued_by, check_key_matches, check_path_len, parse};
use super::{CaError, Signer};
use crate::keys;
use crate::x509::{self, LinkProblem};

/// The files of a plugin CA directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginFiles {
    /// The signing CA certificate (`ca-cert.pem` or `tls.crt`; `tls.crt` may carry the chain).
    pub ca_cert: PathBuf,
    /// Its private key (`ca-key.pem` or `tls.key`).
    pub ca_key: PathBuf,
    /// The trust bundle handed to workloads (`root-cert.pem` or `ca.crt`).
    pub root_cert: PathBuf,
    /// The chain from the CA certificate up to the root (`cert-chain.pem`), if the layout has one.
    pub cert_chain: Option<PathBuf>,
    /// An optional CRL published as-is (`ca-crl.pem`).
    pub crl: Option<PathBuf>,
}

impl PluginFiles {
    /// Finds the files in `dir`: Istio's `ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
    /// `cert-chain.pem`; or `tls.crt`, `tls.key`, `ca.crt`; or a bare root from
    /// `warden certs root-ca` (`root-cert.pem`, `root-key.pem`).
    pub fn detect(dir: &Path) -> Result<Self, CaError> {
        let f = |name: &str| dir.join(name);
        let require = |name: &str, what: &'static str| {
            let p = f(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(CaError::MissingFile { path: p, what })
            }
        };
        let crl = Some(f("ca-crl.pem")).filter(|p| p.exists());
        if f("ca-cert.pem").exists() || f("ca-key.pem").exists() || f("cert-chain.pem").exists() {
            Ok(Self {
                ca_cert: require("ca-cert.pem", "the plugin CA certificate")?,
                ca_key: require("ca-key.pem", "the plugin CA private key")?,
                root_cert: require("root-cert.pem", "the root certificate(s) of the mesh")?,
                cert_chain: Some(require(
                    "cert-chain.pem",
                    "the chain from ca-cert.pem up to the root",
                )?),
                crl,
            })
        } else if f("tls.crt").exists() || f("tls.key").exists() {
            Ok(Self {
                ca_cert: require("tls.crt", "the plugin CA certificate")?,
                ca_key: require("tls.key", "the plugin CA private key")?,
                root_cert: require("ca.crt", "the root certificate(s) of the mesh")?,
                cert_chain: None,
                crl,
            })
        } else if f("root-key.pem").exists() {
            let root = require("root-cert.pem", "the root certificate")?;
            Ok(Self {
                ca_cert: root.clone(),
                ca_key: f("root-key.pem"),
                root_cert: root,
                cert_chain: None,
                crl,
            })
        } else if f("root-cert.pem").exists() {
            Err(CaError::MissingFile {
                path: f("ca-cert.pem"),
                what: "the plugin CA certificate (root-cert.pem alone cannot sign)",
            })
        } else {
            Err(CaError::NotACaDirectory {
                dir: dir.to_owned(),
            })
        }
    }
}

/// A plugin CA after every check passed.
pub(crate) struct LoadedPlugin {
    pub(crate) signer: Signer,
    pub(crate) bundle: Vec<CertificateDer<'static>>,
    pub(crate) crl_der: Option<Vec<u8>>,
}

/// Loads and checks a plugin CA directory at `now`.
pub(crate) fn load(files: &PluginFiles, now: OffsetDateTime) -> Result<LoadedPlugin, CaError> {
    // The CA certificate (tls.crt may carry the chain after it).
    let ca_file = checks::read_certs(&files.ca_cert)?;
    let ca = parse(&ca_file[0], &files.ca_cert, 0)?;

    // The key matches the certificate.
    let key_pem = checks::read_text(&files.ca_key, "the plugin CA private key")?;
    let key = keys::key_pair_from_pem(&key_pem, &files.ca_key.display().to_string())?;
    check_key_matches(&key, &ca, &files.ca_key, &files.ca_cert)?;

    // The CA may sign and is valid.
    check_ca(&ca, &files.ca_cert, now)?;

    // The roots.
    let roots = checks::read_certs(&files.root_cert)?;
    let mut bundle = Vec::with_capacity(roots.len());
    for (i, der) in roots.iter().enumerate() {
        let r = parse(der, &files.root_cert, i)?;
        if checks::check_validity(&r, &files.root_cert, now).is_err() {
            tracing::warn!(
                file = %files.root_cert.display(),
                subject = %x509::subject_text(&r),
                "root certificate not valid now; left out of the trust bundle"
            );
            continue;
        }
        bundle.push(der.clone());
    }

    // The chain above the CA certificate: the rest of the CA file, then cert-chain.pem
    // (whose first certificate is usually ca-cert.pem itself).
    let mut above: Vec<(CertificateDer<'static>, PathBuf)> = ca_file[1..]
        .iter()
        .map(|d| (d.clone(), files.ca_cert.clone()))
        .collect();
    if let Some(chain_path) = &files.cert_chain {
        let chain = checks::read_certs(chain_path)?;
        let skip = usize::from(chain.first() == Some(&ca_file[0]));
        above.extend(
            chain
                .into_iter()
                .skip(skip)
                .map(|d| (d, chain_path.clone())),
        );
    }
    let chain_path = files.cert_chain.as_ref().unwrap_or(&files.ca_cert);

    // Walk up: every certificate issued by the next, every issuer a CA allowed to sign.
    let mut path: Vec<CertificateDer<'static>> = vec![ca_file[0].clone()];
    let mut anchored = roots.contains(&ca_file[0]);
    let mut current_der = ca_file[0].clone();
    let mut current_path = files.ca_cert.clone();
    for (depth, (der, file)) in above.iter().enumerate() {
        if anchored {
            break;
        }
        let current = parse(&current_der, &current_path, 0)?;
        let next = parse(der, file, depth + 1)?;
        check_issued_by(&current, &current_path, &next, file)?;
        check_ca(&next, file, now)?;
        check_path_len(&next, file, depth as u32 + 1)?;
        path.push(der.clone());
        anchored = roots.contains(der);
        current_der = der.clone();
        current_path = file.clone();
    }
    if !anchored {
        // The last certificate must be signed by one of the roots.
        let current = parse(&current_der, &current_path, 0)?;
        let mut found = None;
        let mut name_match_error = None;
        for (i, der) in roots.iter().enumerate() {
            let root = parse(der, &files.root_cert, i)?;
            match x509::check_link(&current, &root) {
                Ok(()) => {
                    found = Some((der.clone(), i));
                    break;
                }
                Err(LinkProblem::NameMismatch) => {}
                Err(_) => {
                    name_match_error =
                        check_issued_by(&current, &current_path, &root, &files.root_cert).err();
                }
            }
        }
        match found {
            Some((der, i)) => {
                let root = parse(&der, &files.root_cert, i)?;
                check_ca(&root, &files.root_cert, now)?;
                check_path_len(&root, &files.root_cert, path.len() as u32)?;
                path.push(der);
            }
            None => {
                if let Some(e) = name_match_error {
                    return Err(e);
                }
                return Err(CaError::ChainDoesNotReachRoot {
                    chain_path: chain_path.clone(),
                    root_path: files.root_cert.clone(),
                    last_subject: x509::subject_text(&current),
                    last_issuer: x509::issuer_text(&current),
                });
            }
        }
    } else {
        // Anchored on a certificate of root-cert.pem: it must be valid (not merely present).
        let anchor = parse(path.last().unwrap_or(&ca_file[0]), &files.root_cert, 0)?;
        check_ca(&anchor, &files.root_cert, now)?;
    }
    // The root that anchors the chain must be in the published bundle.
    if let Some(anchor) = path.last()
        && !bundle.contains(anchor)
    {
        bundle.insert(0, anchor.clone());
    }

    let crl_der = match &files.crl {
        Some(p) => Some(load_crl(p, &path, now)?),
        None => None,
    };
    let signer = Signer::new(path, key, &files.ca_cert)?;
    Ok(LoadedPlugin {
        signer,
        bundle,
        crl_der,
    })
}

/// Loads `ca-crl.pem`: a CRL signed by one of the chain's certificates.
fn load_crl(
    path: &Path,
    chain: &[CertificateDer<'static>],
    now: OffsetDateTime,
) -> Result<Vec<u8>, CaError> {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let bytes = x509::read_file(path).map_err(|e| CaError::io("reading", path, e))?;
    let der = CertificateRevocationListDer::from_pem_slice(&bytes).map_err(|e| {
        CaError::MalformedPem {
            path: path.to_owned(),
            reason: x509::describe_pem_error(&e),
        }
    })?;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
        .map_err(|e| CaError::BadCrl {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let signer = chain
        .iter()
        .filter_map(|d| x509::parse(d).ok())
        .find(|c| c.subject().as_raw() == crl.issuer().as_raw());
    let Some(signer) = signer else {
        return Err(CaError::BadCrl {
            path: path.to_owned(),
            reason: format!(
                "issued by {:?}, which is not in the CA chain",
                crl.issuer().to_string()
            ),
        });
    };
    crl.verify_signature(signer.public_key())
        .map_err(|e| CaError::BadCrl {
            path: path.to_owned(),
            reason: format!("signature does not verify: {e}"),
        })?;
    if let Some(next) = crl.next_update()
        && next.to_datetime() < now
    {
        tracing::warn!(file = %path.display(), next_update = %next.to_datetime(), "plugin CRL is past its nextUpdate");
    }
    Ok(der.as_ref().to_vec())
}
