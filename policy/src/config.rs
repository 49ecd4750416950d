//! Whole-mesh configuration read from YAML: security and networking resources plus MeshConfig.
//!
//! [`parse_config_file`] reads one file of any of the kinds Warden knows; [`ConfigBundle`] is
//! everything a proxy runs with, built (and validated) from YAML documents, e.g. the ones a
//! control plane pushed.

use std::path::Path;

use crate::document::Document;
use crate::error::{ConfigError, ConfigWarning};
use crate::load::parse_file;
use crate::mesh::{MeshConfig, MeshConfigError};
use crate::networking::{NetworkingResource, interpret_networking};
use crate::registry::Registry;
use crate::resource::Resource;
use crate::scope::{PolicySet, PolicySetOptions};

/// What one file contained, all kinds.
#[derive(Debug, Clone, Default)]
pub struct FileConfig {
    /// Valid security resources.
    pub security: Vec<Resource>,
    /// Valid networking resources.
    pub networking: Vec<NetworkingResource>,
    /// Documents of kinds Warden does not read (ignored).
    pub others: Vec<Document>,
    /// Everything rejected. A file with errors should be kept at its last good version.
    pub errors: Vec<ConfigError>,
    /// Accepted but suspicious, or ignored fields.
    pub warnings: Vec<ConfigWarning>,
}

impl FileConfig {
    /// Whether the file has no errors.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Reads one file's text (`path` labels locations): security and networking kinds.
pub fn parse_config_file(path: &Path, text: &str) -> FileConfig {
    let report = parse_file(path, text);
    let mut out = FileConfig {
        security: report.resources,
        errors: report.errors,
        warnings: report.warnings,
        ..FileConfig::default()
    };
    for doc in report.others {
        match interpret_networking(&doc) {
            Some(parsed) => {
                out.warnings.extend(parsed.warnings);
                match parsed.result {
                    Ok(r) => out.networking.push(r),
                    Err(e) => out.errors.extend(e),
                }
            }
            None => out.others.push(doc),
        }
    }
    out.errors.sort_by(|a, b| a.location.cmp(&b.location));
    out
}

/// Why a bundle is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The MeshConfig is invalid.
    #[error("mesh config: {0}")]
    Mesh(#[from] MeshConfigError),
    /// A resource is invalid.
    #[error("{0}")]
    Resource(Box<ConfigError>),
    /// A resource is defined twice.
    #[error("duplicate {0}")]
    Duplicate(String),
}

/// Everything a proxy runs with: MeshConfig, security resources, networking resources and the
/// registry built from them. Validated as a whole: a bundle exists only if every part is valid.
#[derive(Debug)]
pub struct ConfigBundle {
    /// MeshConfig.
    pub mesh: MeshConfig,
    /// Security resources.
    pub security: Vec<Resource>,
    /// Networking resources.
    pub networking: Vec<NetworkingResource>,
    /// The registry built from `networking`.
    pub registry: Registry,
}

impl ConfigBundle {
    /// Builds a bundle from a MeshConfig text and labelled YAML documents (`label` names each
    /// in errors, e.g. `kind/namespace/name`). The first error rejects the whole bundle.
    pub fn from_yaml<'a>(
        mesh_yaml: &str,
        documents: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ConfigBundle, BundleError> {
        let (mesh, _ignored) = MeshConfig::parse(Path::new("meshConfig"), mesh_yaml)?;
        let mut security = Vec::new();
        let mut networking = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (label, text) in documents {
            let f = parse_config_file(Path::new(label), text);
            if let Some(e) = f.errors.into_iter().next() {
                return Err(BundleError::Resource(Box::new(e)));
            }
            for r in &f.security {
                if !seen.insert(r.id()) {
                    return Err(BundleError::Duplicate(format!(
                        "{} {}",
                        r.id().kind,
                        r.id()
                    )));
                }
            }
            for r in &f.networking {
                if !seen.insert(r.id()) {
                    return Err(BundleError::Duplicate(format!(
                        "{} {}",
                        r.id().kind,
                        r.id()
                    )));
                }
            }
            security.extend(f.security);
            networking.extend(f.networking);
        }
        let registry = Registry::build(&networking, &mesh.trust_domain);
        Ok(ConfigBundle {
            mesh,
            security,
            networking,
            registry,
        })
    }

    /// The security policy set, indexed for per-workload compilation with this MeshConfig's root
    /// namespace.
    pub fn policy_set(&self) -> PolicySet {
        PolicySet::new(
            &self.security,
            &PolicySetOptions {
                root_namespace: self.mesh.root_namespace.clone(),
            },
        )
    }
}
