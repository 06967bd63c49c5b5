//! Types and helpers shared by both resources.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of every Sluice resource.
pub const API_GROUP: &str = "serving.sluice.dev";
/// The one served API version.
pub const API_VERSION: &str = "v1alpha1";

/// A reference to one key of a Secret in the object's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the object that refers to it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data whose value is used.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

impl SecretKeyRef {
    /// The Secret key a value of the form `{{secrets/<secret-name>/<key>}}` names (the
    /// upstream spelling of a secret reference, as `environmentVars` takes it); `None` for any
    /// other value.
    pub fn from_reference(value: &str) -> Option<Self> {
        let (name, key) = value
            .strip_prefix("{{secrets/")?
            .strip_suffix("}}")?
            .split_once('/')?;
        (!name.is_empty() && !key.is_empty() && !key.contains('/')).then(|| Self {
            name: name.into(),
            key: key.into(),
        })
    }
}

/// A reference to a whole Secret in the object's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Name of the Secret, in the same namespace as the object that refers to it.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Kubernetes-style conditions, as found on every status: a list keyed by `type`.
pub type Conditions = Vec<Condition>;

/// A free-form key/value tag, carried to billing and usage records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tag {
    /// Tag key.
    #[schemars(length(min = 1, max = 255))]
    pub key: String,
    /// Tag value; may be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub value: Option<String>,
}
