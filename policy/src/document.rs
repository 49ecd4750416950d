//! The generic Kubernetes-object layer: multi-document YAML split into [`Document`]s with
//! `apiVersion`, `kind` and `metadata` read, and the rest kept as a [`serde_yaml::Value`].
//!
//! Other crates reuse this to read kinds the policy crate does not own (ServiceEntry, Gateway, ...).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{ConfigError, Location, Problem};

/// The namespace of a resource whose `metadata.namespace` is not set.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The standard Kubernetes object metadata Warden uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// `metadata.name` (empty when not set).
    pub name: String,
    /// `metadata.namespace`, `default` when not set.
    pub namespace: String,
    /// `metadata.labels`.
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp`, used where "the oldest wins".
    pub creation_timestamp: Option<OffsetDateTime>,
}

impl Default for ObjectMeta {
    fn default() -> Self {
        ObjectMeta {
            name: String::new(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            creation_timestamp: None,
        }
    }
}

impl Serialize for ObjectMeta {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("name", &self.name)?;
        m.serialize_entry("namespace", &self.namespace)?;
        if !self.labels.is_empty() {
            m.serialize_entry("labels", &self.labels)?;
        }
        if !self.annotations.is_empty() {
            m.serialize_entry("annotations", &self.annotations)?;
        }
        if let Some(ts) = self.creation_timestamp {
            let text = ts.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
            m.serialize_entry("creationTimestamp", &text)?;
        }
        m.end()
    }
}

/// Metadata fields Kubernetes sets that Warden accepts and ignores.
const IGNORED_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "generation",
    "managedFields",
    "selfLink",
    "finalizers",
    "ownerReferences",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generateName",
];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "crate::resource::nullable")]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "crate::resource::nullable")]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    creation_timestamp: Option<String>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_yaml::Value>,
}

/// One Kubernetes object read from YAML.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// Where it was read.
    pub source: Location,
    /// `apiVersion`, e.g. `security.istio.io/v1`.
    pub api_version: String,
    /// `kind`, e.g. `AuthorizationPolicy`.
    pub kind: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// The whole document.
    pub raw: serde_yaml::Value,
}

impl Document {
    /// The API group: the part of `apiVersion` before `/` (empty for the core group).
    pub fn group(&self) -> &str {
        self.api_version.rsplit_once('/').map_or("", |(g, _)| g)
    }

    /// The `spec` of the document, if any.
    pub fn spec(&self) -> Option<&serde_yaml::Value> {
        self.raw.get("spec")
    }

    /// Metadata keys that are neither used by Warden nor set by Kubernetes (likely typos).
    pub fn unknown_metadata_keys(&self) -> Vec<String> {
        let Some(serde_yaml::Value::Mapping(m)) = self.raw.get("metadata") else {
            return Vec::new();
        };
        m.keys()
            .map(|k| match k {
                serde_yaml::Value::String(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .filter(|k| {
                !matches!(
                    k.as_str(),
                    "name" | "namespace" | "labels" | "annotations" | "creationTimestamp"
                ) && !IGNORED_METADATA.contains(&k.as_str())
            })
            .collect()
    }
}

/// The documents of one file, and the errors of those that could not be read.
#[derive(Debug, Clone, Default)]
pub struct ParsedDocuments {
    /// Documents read successfully (empty documents are skipped).
    pub documents: Vec<Document>,
    /// Errors: a YAML syntax error stops the file at that document.
    pub errors: Vec<ConfigError>,
}

/// Splits a multi-document YAML text into [`Document`]s. `file` labels locations in errors.
///
/// Empty documents are skipped but counted, so `document N` matches the N-th `---` section.
/// A `kind: List` (`apiVersion: v1`) is expanded into its `items`.
pub fn parse_documents(file: &Path, text: &str) -> ParsedDocuments {
    let file: Arc<Path> = Arc::from(file);
    let mut out = ParsedDocuments::default();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let location = Location::new(file.clone(), i + 1);
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(v) => v,
            Err(e) => {
                out.errors.push(ConfigError {
                    location,
                    resource: None,
                    field: String::new(),
                    problem: Problem::Yaml(e.to_string()),
                });
                // The parser cannot resynchronise after a syntax error.
                break;
            }
        };
        let value = resolve_merge_keys(value);
        if value.is_null() {
            continue;
        }
        if is_list(&value) {
            let items = match value.get("items") {
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                Some(serde_yaml::Value::Null) | None => Vec::new(),
                Some(_) => {
                    out.errors.push(ConfigError {
                        location,
                        resource: None,
                        field: "items".into(),
                        problem: Problem::Schema("expected a sequence".into()),
                    });
                    continue;
                }
            };
            for (j, item) in items.into_iter().enumerate() {
                let location = Location {
                    item: Some(j),
                    ..location.clone()
                };
                push_document(&mut out, location, item);
            }
        } else {
            push_document(&mut out, location, value);
        }
    }
    out
}

fn push_document(out: &mut ParsedDocuments, location: Location, value: serde_yaml::Value) {
    match document_from_value(location, value) {
        Ok(d) => out.documents.push(d),
        Err(e) => out.errors.push(*e),
    }
}

fn is_list(v: &serde_yaml::Value) -> bool {
    v.get("kind").and_then(|k| k.as_str()) == Some("List")
        && v.get("apiVersion").and_then(|k| k.as_str()) == Some("v1")
}

/// Applies YAML `<<` merge keys (serde_yaml 0.9 leaves them as plain keys).
fn resolve_merge_keys(mut v: serde_yaml::Value) -> serde_yaml::Value {
    if v.apply_merge().is_err() {
        // Leave the value as it is: the schema check reports a stray `<<` key.
    }
    v
}

/// Reads `apiVersion`, `kind` and `metadata` from one YAML value.
pub fn document_from_value(
    location: Location,
    raw: serde_yaml::Value,
) -> Result<Document, Box<ConfigError>> {
    let err = |field: &str, problem: Problem| {
        Box::new(ConfigError {
            location: location.clone(),
            resource: None,
            field: field.to_owned(),
            problem,
        })
    };
    if !raw.is_mapping() {
        return Err(err("", Problem::NotAMapping));
    }
    let string_field = |name: &str| -> Result<String, Box<ConfigError>> {
        match raw.get(name) {
            Some(serde_yaml::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(serde_yaml::Value::String(_)) | Some(serde_yaml::Value::Null) | None => {
                Err(err(name, Problem::Missing))
            }
            Some(_) => Err(err(name, Problem::Schema("expected a string".into()))),
        }
    };
    let api_version = string_field("apiVersion")?;
    let kind = string_field("kind")?;
    let metadata = match raw.get("metadata") {
        None | Some(serde_yaml::Value::Null) => ObjectMeta::default(),
        Some(m) => parse_meta(m).map_err(|(field, problem)| err(&field, problem))?,
    };
    Ok(Document {
        source: location,
        api_version,
        kind,
        metadata,
        raw,
    })
}

fn parse_meta(v: &serde_yaml::Value) -> Result<ObjectMeta, (String, Problem)> {
    let raw: RawMeta = serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "metadata".to_owned()
        } else {
            format!("metadata.{path}")
        };
        (field, Problem::Schema(e.into_inner().to_string()))
    })?;
    let _ = raw.other;
    let creation_timestamp = match raw.creation_timestamp {
        None => None,
        Some(s) => Some(OffsetDateTime::parse(&s, &Rfc3339).map_err(|_| {
            (
                "metadata.creationTimestamp".to_owned(),
                Problem::InvalidTimestamp(s.clone()),
            )
        })?),
    };
    Ok(ObjectMeta {
        name: raw.name.unwrap_or_default(),
        namespace: raw
            .namespace
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        labels: raw.labels,
        annotations: raw.annotations,
        creation_timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_documents_and_counts_empty_ones() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\n---\n# comment only\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: b\n  namespace: x\n  uid: 123\n";
        let p = parse_documents(Path::new("f.yaml"), text);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        assert_eq!(p.documents.len(), 2);
        assert_eq!(p.documents[0].metadata.name, "a");
        assert_eq!(p.documents[0].metadata.namespace, "default");
        assert_eq!(p.documents[1].kind, "ServiceEntry");
        assert_eq!(p.documents[1].group(), "networking.istio.io");
        assert_eq!(p.documents[1].metadata.namespace, "x");
        assert!(p.documents[1].source.document > 2);
        assert!(p.documents[1].unknown_metadata_keys().is_empty());
    }

    #[test]
    fn expands_lists() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: A\n  metadata: {name: a}\n- apiVersion: v1\n  kind: B\n  metadata: {name: b}\n";
        let p = parse_documents(Path::new("l.yaml"), text);
        assert_eq!(p.documents.len(), 2);
        assert_eq!(p.documents[1].source.item, Some(1));
        assert_eq!(
            p.documents[1].source.to_string(),
            "l.yaml: document 1 item 1"
        );
    }

    #[test]
    fn reports_syntax_errors_with_the_document() {
        let text = "apiVersion: v1\nkind: A\n---\nkind: [\n";
        let p = parse_documents(Path::new("bad.yaml"), text);
        assert_eq!(p.documents.len(), 1);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].location.document, 2);
        assert!(matches!(p.errors[0].problem, Problem::Yaml(_)));
    }

    #[test]
    fn requires_kind_and_api_version() {
        let p = parse_documents(Path::new("x.yaml"), "kind: A\n");
        assert_eq!(p.errors[0].field, "apiVersion");
        assert_eq!(p.errors[0].problem, Problem::Missing);
        let p = parse_documents(Path::new("x.yaml"), "- 1\n");
        assert_eq!(p.errors[0].problem, Problem::NotAMapping);
    }

    #[test]
    fn parses_timestamps_and_reports_bad_ones() {
        let ok = "apiVersion: v1\nkind: A\nmetadata:\n  name: a\n  creationTimestamp: \"2024-01-02T03:04:05Z\"\n";
        let p = parse_documents(Path::new("t.yaml"), ok);
        assert!(p.documents[0].metadata.creation_timestamp.is_some());
        let bad = "apiVersion: v1\nkind: A\nmetadata:\n  name: a\n  creationTimestamp: yesterday\n";
        let p = parse_documents(Path::new("t.yaml"), bad);
        assert_eq!(p.errors[0].field, "metadata.creationTimestamp");
        assert!(matches!(p.errors[0].problem, Problem::InvalidTimestamp(_)));
    }
}
