//! Usage tracking: the admin price table of the operator config ([`UsagePricing`]), the price
//! it gives an entity ([`UsagePrice`], published in status and passed to the capture sidecar)
//! and the one rule that turns a request's tokens and time into a cost ([`cost`]).
//!
//! Usage rows are written by the capture sidecar of every entity pod, beside the payload table
//! (`<prefix>_usage`): one row per request that reached a model, sampled or not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
pub use sluice_crds::UsagePrice;
use sluice_crds::WorkloadType;

/// The price table of the operator config (`usagePricing`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct UsagePricing {
    /// Currency of every price (an ISO 4217 code), written beside each row's cost.
    pub currency: String,
    /// Token prices by registered model name (`servedEntities[].model`).
    pub models: BTreeMap<String, TokenPrice>,
    /// Time prices by workload type.
    pub workload_types: BTreeMap<WorkloadType, TimePrice>,
}

impl Default for UsagePricing {
    fn default() -> Self {
        Self {
            currency: "USD".into(),
            models: BTreeMap::new(),
            workload_types: BTreeMap::new(),
        }
    }
}

/// What 1,000 tokens of a model cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TokenPrice {
    /// Per 1,000 input (prompt) tokens.
    pub input_per_1k_tokens: f64,
    /// Per 1,000 output (generated) tokens.
    pub output_per_1k_tokens: f64,
}

/// What a second of a workload type costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct TimePrice {
    /// Per GPU-second: multiplied by the workload type's GPUs.
    pub per_gpu_second: f64,
    /// Per second of one replica, GPUs aside (CPU workload types).
    pub per_second: f64,
}

impl UsagePricing {
    /// The price of an entity serving `model` on `workload_type` with `gpus` GPUs per replica:
    /// the model's token price and the workload type's time price, each when listed; `None`
    /// when neither is.
    pub fn price(
        &self,
        model: Option<&str>,
        workload_type: WorkloadType,
        gpus: u32,
    ) -> Option<UsagePrice> {
        let tokens = model.and_then(|m| self.models.get(m));
        let time = self
            .workload_types
            .get(&workload_type)
            .map(|t| t.per_second + t.per_gpu_second * f64::from(gpus))
            .filter(|per_second| *per_second > 0.0);
        if tokens.is_none() && time.is_none() {
            return None;
        }
        Some(UsagePrice {
            currency: self.currency.clone(),
            input_per_1k_tokens: tokens.map(|t| t.input_per_1k_tokens),
            output_per_1k_tokens: tokens.map(|t| t.output_per_1k_tokens),
            per_second: time,
        })
    }

    /// Why the table is unusable, if it is.
    pub fn check(&self) -> Result<(), String> {
        let currency = &self.currency;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!(
                "usagePricing.currency: {currency:?} is not a three-letter ISO 4217 code such as USD"
            ));
        }
        let bad = |v: f64| !v.is_finite() || v < 0.0;
        for (model, p) in &self.models {
            if bad(p.input_per_1k_tokens) || bad(p.output_per_1k_tokens) {
                return Err(format!(
                    "usagePricing.models.{model}: prices must be finite and not negative"
                ));
            }
        }
        for (kind, p) in &self.workload_types {
            if bad(p.per_gpu_second) || bad(p.per_second) {
                return Err(format!(
                    "usagePricing.workloadTypes.{kind:?}: prices must be finite and not negative"
                ));
            }
        }
        Ok(())
    }
}

/// The cost of one request: its tokens at the token prices plus its execution time at the time
/// price. A part whose price is set but whose quantity is unknown (an answer that reported no
/// token counts) makes the cost unknown (`None`) rather than too low.
pub fn cost(
    price: &UsagePrice,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    execution_ms: u64,
) -> Option<f64> {
    let per_1k = |price: Option<f64>, tokens: Option<u64>| match price {
        None => Some(0.0),
        Some(p) => tokens.map(|n| p * n as f64 / 1000.0),
    };
    let tokens = per_1k(price.input_per_1k_tokens, input_tokens)?
        + per_1k(price.output_per_1k_tokens, output_tokens)?;
    let time = price.per_second.unwrap_or(0.0) * execution_ms as f64 / 1000.0;
    Some(tokens + time)
}

/// The capture sidecar's `--usage-price` flag.
pub const PRICE_FLAG: &str = "--usage-price";

/// `price` as the value of [`PRICE_FLAG`]: `<currency>:input=<p>,output=<p>,second=<p>`, each
/// part only when set (`USD:input=0.5,output=1.5`).
pub fn price_arg(price: &UsagePrice) -> String {
    let parts: Vec<String> = [
        ("input", price.input_per_1k_tokens),
        ("output", price.output_per_1k_tokens),
        ("second", price.per_second),
    ]
    .into_iter()
    .filter_map(|(name, value)| value.map(|v| format!("{name}={v}")))
    .collect();
    format!("{}:{}", price.currency, parts.join(","))
}

/// Reads a [`price_arg`] value back.
pub fn parse_price_arg(text: &str) -> Result<UsagePrice, String> {
    let (currency, parts) = text
        .split_once(':')
        .ok_or_else(|| format!("{text:?}: expected <currency>:input=<p>,output=<p>,second=<p>"))?;
    let mut price = UsagePrice {
        currency: currency.trim().to_string(),
        ..UsagePrice::default()
    };
    for part in parts.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected <name>=<price>"))?;
        let value: f64 = value
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| format!("{part:?}: the price is not a finite number ≥ 0"))?;
        let slot = match name {
            "input" => &mut price.input_per_1k_tokens,
            "output" => &mut price.output_per_1k_tokens,
            "second" => &mut price.per_second,
            other => {
                return Err(format!(
                    "{other:?} is not a price (input, output or second)"
                ));
            }
        };
        *slot = Some(value);
    }
    UsagePricing {
        currency: price.currency.clone(),
        ..UsagePricing::default()
    }
    .check()?;
    Ok(price)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pricing() -> UsagePricing {
        UsagePricing {
            currency: "EUR".into(),
            models: BTreeMap::from([(
                "llama".to_string(),
                TokenPrice {
                    input_per_1k_tokens: 0.5,
                    output_per_1k_tokens: 1.5,
                },
            )]),
            workload_types: BTreeMap::from([(
                WorkloadType::GPU_SMALL,
                TimePrice {
                    per_gpu_second: 0.002,
                    per_second: 0.0,
                },
            )]),
        }
    }

    #[test]
    fn token_and_time_prices_add_up() {
        let p = pricing();
        let price = p
            .price(Some("llama"), WorkloadType::GPU_SMALL, 2)
            .expect("priced");
        assert_eq!(price.currency, "EUR");
        assert_eq!(price.per_second, Some(0.004));
        // 2,000 in at 0.5, 1,000 out at 1.5, 500 ms at 0.004/s.
        let c = cost(&price, Some(2000), Some(1000), 500).expect("known");
        assert!((c - (1.0 + 1.5 + 0.002)).abs() < 1e-12, "{c}");
    }

    #[test]
    fn unpriced_entities_and_unknown_tokens_have_no_cost() {
        let p = pricing();
        assert_eq!(p.price(Some("other"), WorkloadType::CPU, 0), None);
        let tokens_only = p
            .price(Some("llama"), WorkloadType::CPU, 0)
            .expect("priced");
        assert_eq!(tokens_only.per_second, None);
        assert_eq!(cost(&tokens_only, None, Some(3), 10), None);
        let time_only = p.price(None, WorkloadType::GPU_SMALL, 1).expect("priced");
        assert_eq!(cost(&time_only, None, None, 2000), Some(0.004));
    }

    #[test]
    fn the_sidecar_flag_carries_the_price_unchanged() {
        let price = pricing()
            .price(Some("llama"), WorkloadType::GPU_SMALL, 1)
            .expect("priced");
        let arg = price_arg(&price);
        assert_eq!(arg, "EUR:input=0.5,output=1.5,second=0.002");
        assert_eq!(parse_price_arg(&arg), Ok(price));
        assert!(
            parse_price_arg("USD:input=-1")
                .unwrap_err()
                .contains("input=-1")
        );
        assert!(parse_price_arg("USD:tip=1").unwrap_err().contains("tip"));
        assert!(parse_price_arg("0.5").is_err());
    }

    #[test]
    fn bad_tables_are_named() {
        let mut p = pricing();
        p.currency = "dollars".into();
        assert!(p.check().unwrap_err().contains("usagePricing.currency"));
        let mut p = pricing();
        p.models.get_mut("llama").unwrap().output_per_1k_tokens = -1.0;
        assert!(p.check().unwrap_err().contains("usagePricing.models.llama"));
    }
}
