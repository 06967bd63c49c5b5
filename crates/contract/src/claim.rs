//! `pvc://<claim>/<path>` URIs, one owner for what the operator does with them: a
//! PersistentVolumeClaim of the object's namespace and a path inside it, the claim name
//! checked, and the volume and mount that show the claim to a container. Model sources are
//! mounted read-only into the fetch step at [`SOURCE_MOUNT_ROOT`]; inference tables read-write
//! into the capture sidecar at [`LAKE_MOUNT_ROOT`].

use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume, VolumeMount};

/// Where `pvc://` inference tables are mounted in the capture sidecar: `<root>/<claim>`.
pub const LAKE_MOUNT_ROOT: &str = "/mnt/lake";
/// Where a `pvc://` model source is mounted (read-only) in the fetch step: `<root>/<claim>`,
/// passed to `inference-server fetch` as `--pvc-root`.
pub const SOURCE_MOUNT_ROOT: &str = "/mnt/pvc";

/// A `pvc://<claim>/<path>` URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimUri {
    /// The claim's name.
    pub claim: String,
    /// The path inside the claim, without leading or trailing `/`.
    pub path: String,
}

impl ClaimUri {
    /// The claim of a `pvc://` URI (`None` for any other scheme); see [`Self::problem`] for
    /// whether the name is valid.
    pub fn of(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("pvc://")?;
        let (claim, path) = rest.split_once('/').unwrap_or((rest, ""));
        Some(Self {
            claim: claim.to_string(),
            path: path.trim_matches('/').to_string(),
        })
    }

    /// Why the claim cannot name a PersistentVolumeClaim (a DNS-1123 subdomain: at most 253
    /// lowercase letters, digits, `-` and `.`, alphanumeric at both ends), if it cannot.
    pub fn problem(&self) -> Option<String> {
        let claim = &self.claim;
        let valid = !claim.is_empty()
            && claim.len() <= 253
            && claim
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
            && claim.starts_with(|c: char| c.is_ascii_alphanumeric())
            && claim.ends_with(|c: char| c.is_ascii_alphanumeric());
        (!valid).then(|| {
            format!(
                "{claim:?} is not a valid PersistentVolumeClaim name (lowercase letters, digits, \
                 '-' and '.', alphanumeric at both ends, at most 253 characters)"
            )
        })
    }

    /// The table as the capture sidecar sees it.
    pub fn file_uri(&self) -> String {
        let base = format!("file://{LAKE_MOUNT_ROOT}/{}", self.claim);
        if self.path.is_empty() {
            base
        } else {
            format!("{base}/{}", self.path)
        }
    }

    /// The pod volume `name` of the claim.
    pub fn volume(&self, name: &str, read_only: bool) -> Volume {
        claim_volume(name, &self.claim, read_only)
    }

    /// The mount of volume `name` at `<root>/<claim>`.
    pub fn mount(&self, name: &str, root: &str, read_only: bool) -> VolumeMount {
        VolumeMount {
            name: name.into(),
            mount_path: format!("{root}/{}", self.claim),
            read_only: Some(read_only),
            ..Default::default()
        }
    }
}

/// The pod volume `name` of the PersistentVolumeClaim `claim`.
pub fn claim_volume(name: &str, claim: &str, read_only: bool) -> Volume {
    Volume {
        name: name.into(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim.to_string(),
            read_only: Some(read_only),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pvc_uri_is_a_claim_and_a_path() {
        let uri = ClaimUri::of("pvc://models/iris/1/").expect("pvc");
        assert_eq!(
            (uri.claim.as_str(), uri.path.as_str()),
            ("models", "iris/1")
        );
        assert_eq!(uri.problem(), None);
        let bare = ClaimUri::of("pvc://models").expect("pvc");
        assert_eq!((bare.claim.as_str(), bare.path.as_str()), ("models", ""));
        assert!(ClaimUri::of("s3://models/iris").is_none());
    }

    #[test]
    fn claim_names_must_be_dns_subdomains() {
        for bad in [
            "pvc:///iris",
            "pvc://Models/iris",
            "pvc://-models/x",
            "pvc://a_b",
        ] {
            let problem = ClaimUri::of(bad).expect("pvc").problem();
            assert!(problem.is_some(), "{bad}");
        }
        let long = format!("pvc://{}/x", "a".repeat(254));
        let problem = ClaimUri::of(&long)
            .and_then(|c| c.problem())
            .expect("too long");
        assert!(problem.contains("253"), "{problem}");
        assert_eq!(
            ClaimUri::of("pvc://models.v1/x").and_then(|c| c.problem()),
            None
        );
    }
}
