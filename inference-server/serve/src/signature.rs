//! Checking requests against a model signature: required columns, cell types, tensor shapes
//! and params. Every error names the column (or param) and row, so a client can fix its body.

use serde_json::{Map, Value};
use sluice_protocol::ApiError;
use sluice_protocol::scoring::{Frame, ScoringInput, json_kind};

use super::model_dir::{ModelSignature, SignatureField, SignatureType};

/// Checks `input` against the signature's inputs. Columns the signature does not name are
/// left alone (MLflow ignores them too).
pub fn check_input(signature: &ModelSignature, input: &ScoringInput) -> Result<(), ApiError> {
    match input {
        ScoringInput::Frame(frame) => check_frame(&signature.inputs, frame),
        ScoringInput::Rows(rows) => check_rows(&signature.inputs, rows),
    }
}

fn check_frame(fields: &[SignatureField], frame: &Frame) -> Result<(), ApiError> {
    for field in fields {
        let Some(name) = field.name.as_deref() else {
            continue;
        };
        let required = field.required.unwrap_or(true);
        let Some(index) = frame.column_index(name) else {
            if required {
                return Err(ApiError::invalid(format!(
                    "missing required column `{name}` (the request has: {})",
                    frame.columns.join(", ")
                )));
            }
            continue;
        };
        for (row, cells) in frame.rows.iter().enumerate() {
            match &cells[index] {
                Value::Null if required => {
                    return Err(ApiError::invalid(format!(
                        "column `{name}` row {row}: a value is required"
                    )));
                }
                Value::Null => {}
                cell => check_column_cell(field, cell).map_err(|problem| {
                    ApiError::invalid(format!("column `{name}` row {row}: {problem}"))
                })?,
            }
        }
    }
    Ok(())
}

/// One cell of a named column: a value of the column's type, or, for a named tensor, a value
/// or a nested list of the tensor's shape past the batch axis (`[1.5]` for `[-1, 1]`).
fn check_column_cell(field: &SignatureField, cell: &Value) -> Result<(), String> {
    match (&field.shape, cell) {
        (Some(shape), Value::Array(_)) => check_shape(field, cell, shape.get(1..).unwrap_or(&[])),
        _ => check_cell(field, cell),
    }
}

/// Unnamed rows fit a single tensor input: each row must match its shape past the batch axis.
fn check_rows(fields: &[SignatureField], rows: &[Value]) -> Result<(), ApiError> {
    let [field] = fields else { return Ok(()) };
    let inner: Vec<i64> = field
        .shape
        .as_deref()
        .map_or_else(Vec::new, |shape| shape.iter().skip(1).copied().collect());
    for (row, value) in rows.iter().enumerate() {
        check_shape(field, value, &inner)
            .map_err(|problem| ApiError::invalid(format!("row {row}: {problem}")))?;
    }
    Ok(())
}

fn check_shape(field: &SignatureField, value: &Value, shape: &[i64]) -> Result<(), String> {
    match (shape.split_first(), value) {
        (None, Value::Array(_)) if field.shape.is_some() => Err(format!(
            "expected a single {}, got a list",
            type_name(field.data_type)
        )),
        (None, _) => check_cell(field, value),
        (Some((&dim, rest)), Value::Array(items)) => {
            if dim >= 0 && items.len() as i64 != dim {
                return Err(format!("expected {dim} values, got {}", items.len()));
            }
            items
                .iter()
                .try_for_each(|item| check_shape(field, item, rest))
        }
        (Some((&dim, _)), other) => Err(format!(
            "expected a list of {dim} values, got {}",
            json_kind(other)
        )),
    }
}

/// Whether one cell fits the field's type.
fn check_cell(field: &SignatureField, cell: &Value) -> Result<(), String> {
    let fits = match field.data_type {
        SignatureType::Double | SignatureType::Float => cell.is_number(),
        SignatureType::Long | SignatureType::Integer => cell.is_i64() || cell.is_u64(),
        SignatureType::Boolean => cell.is_boolean(),
        SignatureType::String | SignatureType::Binary | SignatureType::Datetime => cell.is_string(),
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "expected {}, got {} ({})",
            type_name(field.data_type),
            json_kind(cell),
            short(cell)
        ))
    }
}

/// Checks `params` against the declared ones and fills in defaults.
pub fn resolve_params(
    signature: &ModelSignature,
    params: Map<String, Value>,
) -> Result<Map<String, Value>, ApiError> {
    let declared: Vec<&str> = signature
        .params
        .iter()
        .map(|param| param.name.as_str())
        .collect();
    if let Some(unknown) = params
        .keys()
        .find(|name| !declared.contains(&name.as_str()))
    {
        return Err(ApiError::invalid(if declared.is_empty() {
            format!("unknown param `{unknown}`: this model declares no params")
        } else {
            format!(
                "unknown param `{unknown}`; the model declares: {}",
                declared.join(", ")
            )
        }));
    }
    let mut resolved = Map::new();
    for param in &signature.params {
        let field = SignatureField {
            data_type: param.data_type,
            ..SignatureField::default()
        };
        let value = match params.get(&param.name) {
            Some(value) => {
                check_cell(&field, value).map_err(|problem| {
                    ApiError::invalid(format!("param `{}`: {problem}", param.name))
                })?;
                value.clone()
            }
            None => match &param.default {
                Some(text) => {
                    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.clone()))
                }
                None => continue,
            },
        };
        resolved.insert(param.name.clone(), value);
    }
    Ok(resolved)
}

fn type_name(data_type: SignatureType) -> &'static str {
    match data_type {
        SignatureType::Double => "a double",
        SignatureType::Float => "a float",
        SignatureType::Long => "a long (integer)",
        SignatureType::Integer => "an integer",
        SignatureType::Boolean => "a boolean",
        SignatureType::String => "a string",
        SignatureType::Binary => "base64 bytes (a string)",
        SignatureType::Datetime => "an ISO-8601 datetime (a string)",
    }
}

/// A value cut short for error messages.
fn short(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model_dir::SignatureParam;

    fn column(name: &str, data_type: SignatureType, required: bool) -> SignatureField {
        SignatureField {
            name: Some(name.into()),
            data_type,
            shape: None,
            required: Some(required),
        }
    }

    fn frame(columns: &[&str], rows: Vec<Vec<Value>>) -> ScoringInput {
        ScoringInput::Frame(Frame {
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows,
        })
    }

    #[test]
    fn frames_are_checked_by_column() {
        let signature = ModelSignature {
            inputs: vec![
                column("x", SignatureType::Double, true),
                column("n", SignatureType::Long, false),
            ],
            ..ModelSignature::default()
        };
        assert!(check_input(&signature, &frame(&["x"], vec![vec![json!(1.5)]])).is_ok());
        let missing = check_input(&signature, &frame(&["n"], vec![vec![json!(1)]])).unwrap_err();
        assert!(
            missing.message.contains("missing required column `x`"),
            "{missing}"
        );
        let typed = check_input(
            &signature,
            &frame(
                &["x", "n"],
                vec![vec![json!(1.0), json!(2)], vec![json!("a"), json!(2.5)]],
            ),
        )
        .unwrap_err();
        assert_eq!(
            typed.message,
            r#"column `x` row 1: expected a double, got a string ("a")"#
        );
        let null = check_input(&signature, &frame(&["x"], vec![vec![Value::Null]])).unwrap_err();
        assert!(null.message.contains("row 0: a value is required"));
    }

    #[test]
    fn tensor_rows_are_checked_by_shape() {
        let signature = ModelSignature {
            inputs: vec![SignatureField {
                name: None,
                data_type: SignatureType::Float,
                shape: Some(vec![-1, 4]),
                required: None,
            }],
            ..ModelSignature::default()
        };
        assert!(check_input(&signature, &ScoringInput::Rows(vec![json!([1, 2, 3, 4])])).is_ok());
        let short_row =
            check_input(&signature, &ScoringInput::Rows(vec![json!([1, 2, 3])])).unwrap_err();
        assert_eq!(short_row.message, "row 0: expected 4 values, got 3");
        let bad =
            check_input(&signature, &ScoringInput::Rows(vec![json!([1, 2, "x", 4])])).unwrap_err();
        assert!(bad.message.contains("expected a float, got a string"));
    }

    #[test]
    fn params_get_defaults_and_unknowns_are_refused() {
        let signature = ModelSignature {
            params: vec![SignatureParam {
                name: "k".into(),
                data_type: SignatureType::Long,
                default: Some("3".into()),
            }],
            ..ModelSignature::default()
        };
        assert_eq!(
            resolve_params(&signature, Map::new()).unwrap()["k"],
            json!(3)
        );
        let mut wrong = Map::new();
        wrong.insert("k".into(), json!("three"));
        assert!(
            resolve_params(&signature, wrong)
                .unwrap_err()
                .message
                .contains("param `k`")
        );
        let mut unknown = Map::new();
        unknown.insert("z".into(), json!(1));
        assert!(
            resolve_params(&signature, unknown)
                .unwrap_err()
                .message
                .contains("declares: k")
        );
    }
}
