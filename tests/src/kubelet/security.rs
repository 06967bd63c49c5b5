//! A container's `securityContext` (over its pod's) and resource limits as podman flags, with
//! the kubelet's own checks: `runAsNonRoot` against the user the container would run as
//! (refused as `CreateContainerConfigError`, with the kubelet's message), `fsGroup` and
//! `supplementalGroups` as extra groups (volumes are given to the fsGroup by
//! [`give_to_group`]), read-only root, capabilities, no-new-privileges, seccomp and privileged.
//! Memory limits become cgroup limits (swap off), so an allocation past them is OOMKilled.

use std::{os::unix::fs::PermissionsExt, path::Path};

use k8s_openapi::api::core::v1::{Container, PodSecurityContext, SecurityContext};

use super::resources;

/// The user and group an image runs as (`USER` in its config): numeric or a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageUser(pub String);

impl ImageUser {
    /// The user part (`65532` of `65532:65532`), empty meaning root.
    fn user(&self) -> &str {
        self.0.split(':').next().unwrap_or_default()
    }
}

/// Podman flags for `container` of a pod with `pod` security context, whose image runs as
/// `image_user`; `Err` is the kubelet's `CreateContainerConfigError` message.
pub fn flags(
    pod: Option<&PodSecurityContext>,
    container: &Container,
    image_user: &ImageUser,
) -> Result<Vec<String>, String> {
    let sc = container.security_context.as_ref();
    let run_as_user = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod.and_then(|p| p.run_as_user));
    let run_as_group = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod.and_then(|p| p.run_as_group));
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod.and_then(|p| p.run_as_non_root))
        .unwrap_or(false);
    let mut flags = Vec::new();
    if non_root {
        check_non_root(run_as_user, image_user)?;
    }
    match (run_as_user, run_as_group) {
        (Some(u), Some(g)) => flags.push(format!("--user={u}:{g}")),
        (Some(u), None) => flags.push(format!("--user={u}")),
        (None, Some(g)) => {
            let user = match image_user.user() {
                "" => "0",
                u => u,
            };
            flags.push(format!("--user={user}:{g}"));
        }
        (None, None) => {}
    }
    if let Some(p) = pod {
        for g in p
            .fs_group
            .iter()
            .chain(p.supplemental_groups.iter().flatten())
        {
            flags.push(format!("--group-add={g}"));
        }
    }
    flags.extend(container_flags(sc)?);
    flags.extend(seccomp(pod, sc)?);
    flags.extend(limits(container));
    Ok(flags)
}

/// The kubelet's `verifyRunAsNonRoot`.
fn check_non_root(run_as_user: Option<i64>, image_user: &ImageUser) -> Result<(), String> {
    match run_as_user {
        Some(0) => Err("container's runAsUser breaks non-root policy".into()),
        Some(_) => Ok(()),
        None => match image_user.user() {
            "" | "0" | "root" => {
                Err("container has runAsNonRoot and image will run as root".into())
            }
            u if u.parse::<u32>().is_ok() => Ok(()),
            u => Err(format!(
                "container has runAsNonRoot and image has non-numeric user ({u}), cannot verify \
                 user is non-root"
            )),
        },
    }
}

fn container_flags(sc: Option<&SecurityContext>) -> Result<Vec<String>, String> {
    let mut flags = Vec::new();
    let Some(sc) = sc else {
        return Ok(flags);
    };
    if sc.privileged == Some(true) {
        flags.push("--privileged".into());
    }
    if sc.read_only_root_filesystem == Some(true) {
        // Kubernetes mounts nothing writable on a read-only root (podman would add tmpfs).
        flags.push("--read-only".into());
        flags.push("--read-only-tmpfs=false".into());
    }
    if sc.allow_privilege_escalation == Some(false) {
        flags.push("--security-opt=no-new-privileges".into());
    }
    if let Some(caps) = &sc.capabilities {
        for c in caps.drop.iter().flatten() {
            flags.push(format!("--cap-drop={}", capability(c)?));
        }
        for c in caps.add.iter().flatten() {
            flags.push(format!("--cap-add={}", capability(c)?));
        }
    }
    Ok(flags)
}

fn capability(name: &str) -> Result<String, String> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name.to_ascii_uppercase())
    } else {
        Err(format!("invalid capability {name:?}"))
    }
}

/// Seccomp: the container's profile over the pod's; without one, `Unconfined`, as a kubelet
/// without `--seccomp-default` runs it.
fn seccomp(
    pod: Option<&PodSecurityContext>,
    sc: Option<&SecurityContext>,
) -> Result<Vec<String>, String> {
    let profile = sc
        .and_then(|s| s.seccomp_profile.as_ref())
        .or_else(|| pod.and_then(|p| p.seccomp_profile.as_ref()));
    match profile.map(|p| p.type_.as_str()) {
        None | Some("Unconfined") => Ok(vec!["--security-opt=seccomp=unconfined".into()]),
        Some("RuntimeDefault") => Ok(Vec::new()),
        Some(other) => Err(format!(
            "seccomp profile type {other:?} is not supported by the test kubelet \
             (RuntimeDefault or Unconfined)"
        )),
    }
}

/// Memory and CPU limits as cgroup limits.
fn limits(container: &Container) -> Vec<String> {
    let mut flags = Vec::new();
    let limits = container.resources.as_ref().and_then(|r| r.limits.as_ref());
    let quantity = |name: &str| {
        limits
            .and_then(|l| l.get(name))
            .and_then(|q| resources::parse_quantity(&q.0))
    };
    if let Some(bytes) = quantity("memory") {
        let bytes = bytes.ceil() as u64;
        flags.push(format!("--memory={bytes}b"));
        flags.push(format!("--memory-swap={bytes}b"));
    }
    if let Some(cpus) = quantity("cpu") {
        flags.push(format!("--cpus={cpus:.3}"));
    }
    flags
}

/// Gives a volume folder to the pod's `fsGroup`, as the kubelet does for emptyDir, configMap,
/// secret, projected, downwardAPI and PVC volumes: group owner `gid`, group read/write, and the
/// setgid bit on folders so new files stay in the group.
pub fn give_to_group(dir: &Path, gid: u32) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    std::os::unix::fs::lchown(dir, None, Some(gid))?;
    let mode = meta.permissions().mode();
    if meta.is_dir() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o2070))?;
        for entry in std::fs::read_dir(dir)? {
            give_to_group(&entry?.path(), gid)?;
        }
    } else {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o060))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Capabilities, ResourceRequirements, SeccompProfile};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::*;

    fn container(sc: SecurityContext) -> Container {
        Container {
            security_context: Some(sc),
            ..Default::default()
        }
    }

    #[test]
    fn run_as_non_root_is_checked_against_the_image_user() {
        let c = container(SecurityContext {
            run_as_non_root: Some(true),
            ..Default::default()
        });
        let root = ImageUser(String::new());
        let err = flags(None, &c, &root).unwrap_err();
        assert_eq!(err, "container has runAsNonRoot and image will run as root");
        assert!(flags(None, &c, &ImageUser("65532:65532".into())).is_ok());
        let named = flags(None, &c, &ImageUser("nonroot".into())).unwrap_err();
        assert!(named.contains("non-numeric user (nonroot)"), "{named}");
        let as_root = container(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(0),
            ..Default::default()
        });
        assert!(flags(None, &as_root, &ImageUser("65532".into())).is_err());
        let pod = PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(1000),
            ..Default::default()
        };
        let f = flags(Some(&pod), &Container::default(), &root).unwrap();
        assert!(f.contains(&"--user=1000".to_string()), "{f:?}");
    }

    #[test]
    fn the_restricted_context_maps_to_podman_flags() {
        let mut c = container(SecurityContext {
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: Some(vec!["net_bind_service".into()]),
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        c.resources = Some(ResourceRequirements {
            limits: Some(
                [
                    ("memory".to_string(), Quantity("64Mi".into())),
                    ("cpu".to_string(), Quantity("500m".into())),
                ]
                .into(),
            ),
            ..Default::default()
        });
        let pod = PodSecurityContext {
            fs_group: Some(2000),
            supplemental_groups: Some(vec![3000]),
            ..Default::default()
        };
        let f = flags(Some(&pod), &c, &ImageUser(String::new())).unwrap();
        for want in [
            "--user=65532:65532",
            "--group-add=2000",
            "--group-add=3000",
            "--read-only",
            "--read-only-tmpfs=false",
            "--security-opt=no-new-privileges",
            "--cap-drop=ALL",
            "--cap-add=NET_BIND_SERVICE",
            "--memory=67108864b",
            "--memory-swap=67108864b",
            "--cpus=0.500",
        ] {
            assert!(f.contains(&want.to_string()), "{want} missing from {f:?}");
        }
        assert!(!f.iter().any(|x| x.contains("seccomp")), "{f:?}");
        let bare = flags(None, &Container::default(), &ImageUser(String::new())).unwrap();
        assert_eq!(bare, ["--security-opt=seccomp=unconfined"]);
    }

    #[test]
    fn bad_capabilities_and_localhost_profiles_are_refused() {
        let c = container(SecurityContext {
            capabilities: Some(Capabilities {
                add: Some(vec!["NET ADMIN; rm".into()]),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(flags(None, &c, &ImageUser(String::new())).is_err());
        let c = container(SecurityContext {
            seccomp_profile: Some(SeccompProfile {
                type_: "Localhost".into(),
                localhost_profile: Some("x.json".into()),
            }),
            ..Default::default()
        });
        assert!(flags(None, &c, &ImageUser(String::new())).is_err());
    }
}
