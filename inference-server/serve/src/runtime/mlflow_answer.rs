//! The answer MLflow's scoring server gives for a model of the `onnx` flavor, so that the
//! builtin runtime answers an `MLmodel` directory exactly as `mlflow models serve` does.
//!
//! MLflow hands the ONNX flavor either a pandas DataFrame or tensors (a numpy array, or a dict
//! of them), and its answer follows: for tensors, `{output name: the whole output}` for every
//! output (one output too); for a DataFrame, a DataFrame with each output flattened to one
//! dimension, answered as records (`[{output name: value}, ...]`), which fails when the outputs
//! flatten to different lengths (a probability matrix beside a label). Which one MLflow hands
//! over: a tensor signature makes every body tensors, a column signature makes every body a
//! DataFrame, and without a signature the body decides (`dataframe_split`,
//! `dataframe_records` and CSV are DataFrames, `instances` and `inputs` tensors).
//! `tests/mlflow_parity.rs` compares both servers on models saved by `mlflow.onnx.save_model`.

use serde_json::{Map, Value};
use sluice_protocol::ApiError;
use sluice_protocol::scoring::InputLayout;

use crate::model_dir::ModelSignature;

/// What MLflow hands the ONNX flavor for a body of `layout`.
pub fn pyfunc_input(signature: Option<&ModelSignature>, layout: InputLayout) -> InputLayout {
    match signature.filter(|s| !s.inputs.is_empty()) {
        Some(s) if s.inputs.iter().any(|field| field.shape.is_some()) => InputLayout::Tensor,
        Some(_) => InputLayout::DataFrame,
        None => layout,
    }
}

/// `rows` — one per request row: the output's value, or an object of the outputs by name when
/// the graph has several — as MLflow answers them for `input`.
pub fn answer(rows: Vec<Value>, outputs: &[String], input: InputLayout) -> Result<Value, ApiError> {
    let columns: Vec<Vec<Value>> = match outputs {
        [_] => vec![rows],
        _ => {
            let mut columns = vec![Vec::with_capacity(rows.len()); outputs.len()];
            for row in rows {
                let Value::Object(mut by_name) = row else {
                    return Err(ApiError::internal(
                        "a row of a multi-output model is no object",
                    ));
                };
                for (column, name) in columns.iter_mut().zip(outputs) {
                    column.push(by_name.remove(name).unwrap_or(Value::Null));
                }
            }
            columns
        }
    };
    match input {
        InputLayout::Tensor => Ok(Value::Object(
            outputs
                .iter()
                .cloned()
                .zip(columns.into_iter().map(Value::Array))
                .collect(),
        )),
        InputLayout::DataFrame => records(outputs, columns),
    }
}

/// The outputs flattened to one dimension each (numpy's `reshape(-1)`), as records.
fn records(outputs: &[String], columns: Vec<Vec<Value>>) -> Result<Value, ApiError> {
    let flat: Vec<Vec<Value>> = columns
        .into_iter()
        .map(|column| {
            let mut out = Vec::with_capacity(column.len());
            column
                .into_iter()
                .for_each(|value| flatten_into(value, &mut out));
            out
        })
        .collect();
    let length = flat.first().map_or(0, Vec::len);
    if let Some((name, other)) = outputs.iter().zip(&flat).find(|(_, c)| c.len() != length) {
        return Err(ApiError::bad_request(format!(
            "the model's outputs flatten to {length} values ({}) and {} values ({name}); MLflow \
             answers a DataFrame input to an ONNX model only when every output has one value \
             per row: send `instances` or `inputs` for this model",
            outputs[0],
            other.len()
        )));
    }
    let mut iters: Vec<_> = flat.into_iter().map(Vec::into_iter).collect();
    Ok(Value::Array(
        (0..length)
            .map(|_| {
                let row: Map<String, Value> = outputs
                    .iter()
                    .cloned()
                    .zip(iters.iter_mut().map(|it| it.next().unwrap_or(Value::Null)))
                    .collect();
                Value::Object(row)
            })
            .collect(),
    ))
}

fn flatten_into(value: Value, out: &mut Vec<Value>) {
    match value {
        Value::Array(items) => items.into_iter().for_each(|item| flatten_into(item, out)),
        other => out.push(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tensors_answer_each_output_whole() {
        let rows = vec![
            json!({"label": 0, "p": [0.9, 0.1]}),
            json!({"label": 1, "p": [0.2, 0.8]}),
        ];
        assert_eq!(
            answer(rows, &names(&["label", "p"]), InputLayout::Tensor).unwrap(),
            json!({"label": [0, 1], "p": [[0.9, 0.1], [0.2, 0.8]]})
        );
        let single = vec![json!([0.5]), json!([1.5])];
        assert_eq!(
            answer(single, &names(&["variable"]), InputLayout::Tensor).unwrap(),
            json!({"variable": [[0.5], [1.5]]})
        );
    }

    #[test]
    fn a_dataframe_gets_records_of_flattened_outputs_or_an_error() {
        let single = vec![json!([0.5]), json!([1.5])];
        assert_eq!(
            answer(single, &names(&["variable"]), InputLayout::DataFrame).unwrap(),
            json!([{"variable": 0.5}, {"variable": 1.5}])
        );
        let zipped = vec![json!({"label": 0, "p": {"0": 0.9, "1": 0.1}})];
        assert_eq!(
            answer(zipped, &names(&["label", "p"]), InputLayout::DataFrame).unwrap(),
            json!([{"label": 0, "p": {"0": 0.9, "1": 0.1}}])
        );
        let matrix = vec![json!({"label": 0, "p": [0.9, 0.1]})];
        let error = answer(matrix, &names(&["label", "p"]), InputLayout::DataFrame).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("flatten to 1 values (label) and 2 values (p)"),
            "{error}"
        );
    }
}
