//! `resourceFieldRef` values (downward API): a container's CPU, memory and ephemeral-storage
//! requests and limits, divided by the divisor and rounded up, with unset limits falling back to
//! the node's allocatable, as the kubelet computes them.

use k8s_openapi::{api::core::v1::Container, apimachinery::pkg::api::resource::Quantity};

use super::NodeConfig;

/// A Kubernetes quantity (`500m`, `2`, `1Gi`, `1e3`) as a number.
pub fn parse_quantity(text: &str) -> Option<f64> {
    let text = text.trim();
    const SUFFIXES: [(&str, f64); 16] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("", 1.0),
    ];
    for (suffix, factor) in SUFFIXES {
        if let Some(number) = text.strip_suffix(suffix)
            && let Ok(value) = number.parse::<f64>()
        {
            // `1E3` parses as a number before the `E` suffix is tried: fine, the same value.
            return Some(value * factor);
        }
    }
    None
}

/// The value of `resource` (`limits.cpu`, `requests.memory`, …) for `container` on `node`.
pub fn field_value(
    container: &Container,
    node: Option<&NodeConfig>,
    resource: &str,
    divisor: Option<&Quantity>,
) -> Option<String> {
    let (kind, name) = resource.split_once('.')?;
    let resources = container.resources.as_ref();
    let set = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return None,
    }
    .and_then(|m| m.get(name))
    .and_then(|q| parse_quantity(&q.0));
    let value = match set {
        Some(v) => v,
        // Unset limits are the node's allocatable; unset requests are 0.
        None if kind == "limits" => node
            .and_then(|n| n.capacity().get(name).cloned())
            .and_then(|q| parse_quantity(&q))
            .unwrap_or(0.0),
        None => 0.0,
    };
    let divisor = divisor
        .and_then(|d| parse_quantity(&d.0))
        .filter(|d| *d > 0.0)
        .unwrap_or(1.0);
    let scaled = (value / divisor).ceil();
    // Whole numbers only; the value fits easily.
    Some(format!("{scaled:.0}"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::ResourceRequirements;

    use super::*;

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1Gi"), Some(1_073_741_824.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("64M"), Some(64e6));
        assert_eq!(parse_quantity("x"), None);
    }

    #[test]
    fn values_round_up_and_limits_default_to_the_node() {
        let container = Container {
            resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
                limits: Some(BTreeMap::from([("memory".into(), Quantity("1Gi".into()))])),
                ..Default::default()
            }),
            ..Default::default()
        };
        let node = NodeConfig::cpu("n");
        let mi = Quantity("1Mi".into());
        let milli = Quantity("1m".into());
        assert_eq!(
            field_value(&container, Some(&node), "requests.cpu", None).as_deref(),
            Some("1")
        );
        assert_eq!(
            field_value(&container, Some(&node), "requests.cpu", Some(&milli)).as_deref(),
            Some("250")
        );
        assert_eq!(
            field_value(&container, Some(&node), "limits.memory", Some(&mi)).as_deref(),
            Some("1024")
        );
        assert_eq!(
            field_value(&container, Some(&node), "limits.cpu", None).as_deref(),
            Some("16")
        );
        assert_eq!(
            field_value(&container, Some(&node), "requests.memory", None).as_deref(),
            Some("0")
        );
    }
}
