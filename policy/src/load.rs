//! Loading policy files and directories, per file, so one bad file does not take the others down.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use crate::document::{Document, parse_documents};
use crate::error::{ConfigError, ConfigWarning, Location, Problem, ResourceId};
use crate::resource::{Interpreted, Resource, interpret};

/// What one file contained.
#[derive(Debug, Clone, Default)]
pub struct FileReport {
    /// The file.
    pub path: PathBuf,
    /// The valid security resources. When the file has errors these are only informative:
    /// [`LoadReport::resources`] skips them, so the caller keeps the file's last good version.
    pub resources: Vec<Resource>,
    /// Documents of other kinds (ServiceEntry, Gateway, ...), for other readers.
    pub others: Vec<Document>,
    /// Everything rejected.
    pub errors: Vec<ConfigError>,
    /// Accepted but suspicious.
    pub warnings: Vec<ConfigWarning>,
}

impl FileReport {
    /// Whether the file has no errors.
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Reads one file's text (`path` labels locations).
pub fn parse_file(path: &Path, text: &str) -> FileReport {
    let parsed = parse_documents(path, text);
    let mut report = FileReport {
        path: path.to_owned(),
        errors: parsed.errors,
        ..FileReport::default()
    };
    for doc in parsed.documents {
        match interpret(doc) {
            Interpreted::Security { result, warnings } => {
                report.warnings.extend(warnings);
                match result {
                    Ok(r) => report.resources.push(r),
                    Err(errors) => report.errors.extend(errors),
                }
            }
            Interpreted::Other(d) => report.others.push(d),
        }
    }
    report.errors.sort_by(|a, b| a.location.cmp(&b.location));
    report
}

/// The result of loading a file or a directory.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// One entry per file, in path order.
    pub files: Vec<FileReport>,
}

impl LoadReport {
    /// The resources of the files without errors.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.files
            .iter()
            .filter(|f| f.is_ok())
            .flat_map(|f| f.resources.iter())
    }

    /// Every error of every file.
    pub fn errors(&self) -> impl Iterator<Item = &ConfigError> {
        self.files.iter().flat_map(|f| f.errors.iter())
    }

    /// Every warning of every file.
    pub fn warnings(&self) -> impl Iterator<Item = &ConfigWarning> {
        self.files.iter().flat_map(|f| f.warnings.iter())
    }

    /// Documents of other kinds, from every file.
    pub fn others(&self) -> impl Iterator<Item = &Document> {
        self.files.iter().flat_map(|f| f.others.iter())
    }

    /// Whether any file has an error.
    pub fn has_errors(&self) -> bool {
        self.files.iter().any(|f| !f.is_ok())
    }

    /// Builds a report from files already read, in the order given, and flags resources defined
    /// twice (the later definition is the error).
    pub fn from_files(files: Vec<FileReport>) -> LoadReport {
        let mut report = LoadReport { files };
        report.flag_duplicates();
        report
    }

    fn flag_duplicates(&mut self) {
        let mut seen: HashMap<ResourceId, Location> = HashMap::new();
        for file in &mut self.files {
            let mut dups = Vec::new();
            for r in &file.resources {
                let id = r.id();
                match seen.get(&id) {
                    Some(first) => dups.push(ConfigError {
                        location: r.source().clone(),
                        resource: Some(id),
                        field: "metadata.name".into(),
                        problem: Problem::Duplicate(first.to_string()),
                    }),
                    None => {
                        seen.insert(id, r.source().clone());
                    }
                }
            }
            file.errors.extend(dups);
        }
    }
}

/// Why a directory could not be listed.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct LoadError {
    /// The path.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

fn is_yaml(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yaml") | Some("yml")
    )
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), LoadError> {
    let err = |source| LoadError {
        path: dir.to_owned(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let name = entry.file_name();
        // Hidden entries include Kubernetes ConfigMap mounts' `..data` links (duplicates).
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if is_yaml(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The files [`load_path`] reads: `path` itself when it is a file, else every `.yaml`/`.yml`
/// file under it (recursively, sorted by path, hidden entries skipped).
pub fn yaml_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let metadata = std::fs::metadata(path).map_err(|source| LoadError {
        path: path.to_owned(),
        source,
    })?;
    let mut paths = Vec::new();
    if metadata.is_dir() {
        collect(path, &mut paths)?;
        paths.sort();
    } else {
        paths.push(path.to_owned());
    }
    Ok(paths)
}

/// Loads a `.yaml`/`.yml` file, or every such file under a directory (recursively, sorted by
/// path, hidden entries skipped). An unreadable file is an error in its own [`FileReport`].
pub fn load_path(path: &Path) -> Result<LoadReport, LoadError> {
    let files = yaml_files(path)?
        .into_iter()
        .map(|p| match std::fs::read_to_string(&p) {
            Ok(text) => parse_file(&p, &text),
            Err(e) => FileReport {
                errors: vec![ConfigError {
                    location: Location::new(p.as_path(), 0),
                    resource: None,
                    field: String::new(),
                    problem: Problem::Io(e.to_string()),
                }],
                path: p,
                ..FileReport::default()
            },
        })
        .collect();
    Ok(LoadReport::from_files(files))
}

/// The last good contents of each file: a file that now has errors keeps its previous
/// resources, so a bad edit never removes policy in force.
#[derive(Debug, Clone, Default)]
pub struct LastGoodConfig {
    files: BTreeMap<PathBuf, Vec<Resource>>,
}

impl LastGoodConfig {
    /// Takes a new load: files without errors replace their previous contents, files with
    /// errors keep them, files no longer present are removed. Returns the files kept at their
    /// last good version.
    pub fn update(&mut self, report: &LoadReport) -> Vec<PathBuf> {
        let present: std::collections::BTreeSet<&Path> =
            report.files.iter().map(|f| f.path.as_path()).collect();
        self.files.retain(|p, _| present.contains(p.as_path()));
        let mut kept = Vec::new();
        for f in &report.files {
            if f.is_ok() {
                self.files.insert(f.path.clone(), f.resources.clone());
            } else if self.files.contains_key(&f.path) {
                kept.push(f.path.clone());
            }
        }
        kept
    }

    /// The resources in force.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.files.values().flatten()
    }
}
