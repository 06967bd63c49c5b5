//! Images: which ones run as containers, and pulling them as a node does.
//!
//! An image hosted on a loopback registry (`127.x.y.z:<port>/…` or `localhost:<port>/…`) is
//! pulled from there with `podman pull` (plain HTTP, the registry being on loopback) and run
//! as a real container; a failed pull leaves the container waiting in `ErrImagePull`, then
//! `ImagePullBackOff`, with podman's message. Images on any other registry (vLLM, Triton:
//! engines this machine cannot run) run without a process, as kwok runs them, and are the only
//! ones that do.

use std::net::Ipv4Addr;

use super::{process::podman, security::ImageUser};

/// Whether `image` names a registry on a loopback address (and so runs as a container).
pub fn runs_as_container(image: &str) -> bool {
    let Some((host, _)) = image.split_once('/') else {
        return false;
    };
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name == "localhost" || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Makes `image` present (pulling it when missing, or always with `pull_policy` `Always`) and
/// returns the user its config runs as; `Err` is the pull's error message.
pub async fn ensure(image: &str, pull_policy: Option<&str>) -> Result<ImageUser, String> {
    if pull_policy != Some("Always")
        && let Some(user) = user_of(image).await
    {
        return Ok(user);
    }
    let out = podman()
        .args(["pull", "--quiet", "--tls-verify=false", image])
        .output()
        .await
        .map_err(|e| format!("running podman pull: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "failed to pull image {image:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    user_of(image)
        .await
        .ok_or_else(|| format!("image {image:?} was pulled but cannot be inspected"))
}

/// The user of `image` if it is present under exactly that name: podman would also match a
/// digest held under another repository, which a node's image store does not.
async fn user_of(image: &str) -> Option<ImageUser> {
    let out = podman()
        .args([
            "image",
            "inspect",
            "--format",
            "{{.Config.User}}|{{join .RepoDigests \",\"}},{{join .RepoTags \",\"}}",
            image,
        ])
        .output()
        .await
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (user, names) = text.trim().split_once('|')?;
    let wanted = normalized(image);
    (out.status.success() && names.split(',').any(|n| n == wanted))
        .then(|| ImageUser(user.to_string()))
}

/// `image` as podman lists it: a digest reference as is, a tag reference with `:latest` when
/// it has no tag.
fn normalized(image: &str) -> String {
    if image.contains('@') {
        return image.to_string();
    }
    let last = image.rsplit('/').next().unwrap_or_default();
    if last.contains(':') {
        image.to_string()
    } else {
        format!("{image}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_registries_run_as_containers() {
        assert!(runs_as_container("127.0.0.1:5000/sluice-dev/x@sha256:ab"));
        assert!(runs_as_container("localhost:5000/x:1"));
        assert!(runs_as_container("127.3.0.1/x"));
        assert!(!runs_as_container("vllm/vllm-openai:latest"));
        assert!(!runs_as_container(
            "ghcr.io/sluice-dev/inference-server:0.1.0"
        ));
        assert!(!runs_as_container("10.0.0.1:5000/x"));
        assert!(!runs_as_container("busybox"));
    }

    #[test]
    fn references_are_compared_as_podman_lists_them() {
        assert_eq!(normalized("127.0.0.1:5000/x"), "127.0.0.1:5000/x:latest");
        assert_eq!(normalized("127.0.0.1:5000/x:v1"), "127.0.0.1:5000/x:v1");
        assert_eq!(
            normalized("127.0.0.1:5000/x@sha256:ab"),
            "127.0.0.1:5000/x@sha256:ab"
        );
    }
}
