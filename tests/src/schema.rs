//! Offline validation of Sluice objects against the generated CRDs, the way the API server does
//! it: unknown fields, the OpenAPI schema (types, enums, bounds, patterns) and the CEL rules
//! (`x-kubernetes-validations`, evaluated by `kube-cel`), then typed deserialisation.
//!
//! The end-to-end suite proves the same manifests against the real kube-apiserver; this module
//! gives the same verdicts in milliseconds and names the field and the rule that failed.

use std::{collections::BTreeMap, fmt, path::Path};

use serde_json::Value;

/// One rejected field, spelled like the API server spells it (`spec.trafficConfig.routes`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `spec.servedEntities[0]`.
    pub field: String,
    /// What rule it broke.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Failures to set up a validator.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// A CRD file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A CRD file is not valid YAML or not a CRD.
    #[error("parsing {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// A CRD's schema is not a valid JSON schema.
    #[error("compiling the schema of {kind}: {message}")]
    Compile {
        /// Kind whose schema failed.
        kind: String,
        /// What was wrong.
        message: String,
    },
}

struct KindSchema {
    api_version: String,
    schema: Value,
    json: jsonschema::Validator,
    cel: kube_cel::CompiledSchema,
}

/// Validates objects of the kinds found in a folder of CRD YAML files.
pub struct SchemaValidator {
    kinds: BTreeMap<String, KindSchema>,
    cel: kube_cel::Validator,
}

impl SchemaValidator {
    /// Loads every `*.yaml` CRD in `dir` (the served version of each).
    pub fn from_dir(dir: &Path) -> Result<Self, SchemaError> {
        let mut kinds = BTreeMap::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|source| SchemaError::Read {
                path: dir.display().to_string(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        entries.sort();
        for path in entries {
            let shown = path.display().to_string();
            let text = std::fs::read_to_string(&path).map_err(|source| SchemaError::Read {
                path: shown.clone(),
                source,
            })?;
            let crd: Value = serde_norway::from_str(&text).map_err(|e| SchemaError::Parse {
                path: shown.clone(),
                message: e.to_string(),
            })?;
            let (kind, schema) = parse_crd(&crd).ok_or_else(|| SchemaError::Parse {
                path: shown.clone(),
                message: "not a CustomResourceDefinition with an openAPIV3Schema".into(),
            })?;
            let json = jsonschema::draft4::new(&schema.1).map_err(|e| SchemaError::Compile {
                kind: kind.clone(),
                message: e.to_string(),
            })?;
            let cel = kube_cel::compile_schema(&schema.1);
            if cel.has_errors() {
                let message = cel
                    .compilation_errors()
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(SchemaError::Compile { kind, message });
            }
            kinds.insert(
                kind,
                KindSchema {
                    api_version: schema.0,
                    schema: schema.1,
                    json,
                    cel,
                },
            );
        }
        Ok(Self {
            kinds,
            cel: kube_cel::Validator::new(),
        })
    }

    /// Whether objects of this kind are checked (other kinds, e.g. Secrets, pass through).
    pub fn knows(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// Validates one object; `old` is the previous state for transition rules (updates).
    pub fn validate(&self, object: &Value, old: Option<&Value>) -> Result<(), Vec<FieldError>> {
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let Some(k) = self.kinds.get(kind) else {
            return Err(vec![FieldError {
                field: "kind".into(),
                message: format!("unknown kind {kind:?}"),
            }]);
        };
        let mut errors = Vec::new();
        if object.get("apiVersion").and_then(Value::as_str) != Some(k.api_version.as_str()) {
            errors.push(FieldError {
                field: "apiVersion".into(),
                message: format!("must be {}", k.api_version),
            });
        }
        // The API server checks metadata itself; the schema covers everything else.
        let mut body = object.clone();
        if let Some(map) = body.as_object_mut() {
            map.remove("apiVersion");
            map.remove("kind");
            map.remove("metadata");
        }
        unknown_fields(&k.schema, &body, "", &mut errors);
        for e in k.json.iter_errors(&body) {
            let mut field = pointer_to_field(e.instance_path().as_str());
            // Like the API server, name the missing field itself, not the object lacking it.
            if let jsonschema::error::ValidationErrorKind::Required { property } = e.kind() {
                field = format!("{field}.{}", property.as_str().unwrap_or_default());
            }
            errors.push(FieldError {
                field,
                message: e.to_string(),
            });
        }
        if errors.is_empty()
            && let Err(cel_errors) = self.cel.validate_compiled(&k.cel, object, old)
        {
            for e in cel_errors.as_slice() {
                errors.push(FieldError {
                    field: e.field_path.trim_start_matches('.').to_string(),
                    message: e.message.clone(),
                });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn parse_crd(crd: &Value) -> Option<(String, (String, Value))> {
    let spec = crd.get("spec")?;
    let kind = spec.pointer("/names/kind")?.as_str()?.to_string();
    let group = spec.get("group")?.as_str()?;
    let version = spec
        .get("versions")?
        .as_array()?
        .iter()
        .find(|v| v["served"] == Value::Bool(true))?;
    let name = version.get("name")?.as_str()?;
    let schema = version.pointer("/schema/openAPIV3Schema")?.clone();
    Some((kind, (format!("{group}/{name}"), schema)))
}

/// Reports fields the schema does not declare, as strict field validation does.
fn unknown_fields(schema: &Value, value: &Value, path: &str, errors: &mut Vec<FieldError>) {
    if schema.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true)) {
        return;
    }
    match value {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            for (key, child) in map {
                let child_path = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match (props.and_then(|p| p.get(key)), additional) {
                    (Some(s), _) | (None, Some(s)) => unknown_fields(s, child, &child_path, errors),
                    (None, None) => errors.push(FieldError {
                        field: child_path,
                        message: "unknown field".into(),
                    }),
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    unknown_fields(item_schema, item, &format!("{path}[{i}]"), errors);
                }
            }
        }
        _ => {}
    }
}

/// `/spec/routes/0/x` → `spec.routes[0].x`.
fn pointer_to_field(pointer: &str) -> String {
    let mut out = String::new();
    for seg in pointer.split('/').skip(1) {
        let seg = seg.replace("~1", "/").replace("~0", "~");
        if seg.parse::<usize>().is_ok() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&seg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::pointer_to_field;

    #[test]
    fn pointers_become_field_paths() {
        assert_eq!(
            pointer_to_field("/spec/trafficConfig/routes/0/trafficPercentage"),
            "spec.trafficConfig.routes[0].trafficPercentage"
        );
        assert_eq!(pointer_to_field(""), "");
    }
}
