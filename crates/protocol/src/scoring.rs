//! The MLflow scoring protocol of `/invocations`.
//!
//! A JSON body carries exactly one of `dataframe_split`, `dataframe_records`, `instances` or
//! `inputs`, plus optional `params`; a CSV body (`text/csv` or `application/csv`) is one
//! table with a header row. Every form is normalised into a [`ScoringInput`]: named columns
//! ([`Frame`]) or unnamed rows, which the runtimes check against the model signature.

use serde_json::{Map, Value};

use super::ApiError;

/// The four input keys of the protocol, in the order error messages name them.
pub const INPUT_KEYS: [&str; 4] = [
    "dataframe_split",
    "dataframe_records",
    "instances",
    "inputs",
];

/// Keys a body may carry beside the input (recorded elsewhere, never passed to the model).
const ALLOWED_EXTRA_KEYS: [&str; 3] = ["params", "client_request_id", "usage_context"];

/// A parsed `/invocations` body.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoringRequest {
    /// The rows to score.
    pub input: ScoringInput,
    /// Inference parameters, checked against the signature's `params` by the runtime.
    pub params: Map<String, Value>,
    /// How MLflow's scoring server reads the body's form.
    pub layout: InputLayout,
}

/// What MLflow's scoring server turns a body into before the model sees it; MLflow's ONNX
/// flavor shapes its answer by it (for a model without a signature).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputLayout {
    /// A pandas DataFrame: `dataframe_split`, `dataframe_records`, CSV.
    DataFrame,
    /// Tensors (a numpy array, or a dict of them): `instances`, `inputs`.
    Tensor,
}

/// The rows of a request, in one of two shapes.
#[derive(Clone, Debug, PartialEq)]
pub enum ScoringInput {
    /// Named columns: `dataframe_split`, `dataframe_records`, CSV, `instances` of objects, or
    /// `inputs` as a dict of columns.
    Frame(Frame),
    /// Unnamed rows: `instances` or `inputs` as a list; each element is one row (a scalar, a
    /// string or a nested list).
    Rows(Vec<Value>),
}

impl ScoringInput {
    /// How many rows the input has.
    pub fn len(&self) -> usize {
        match self {
            Self::Frame(frame) => frame.rows.len(),
            Self::Rows(rows) => rows.len(),
        }
    }

    /// Whether the input has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A table of named columns; a cell the request left out is `Value::Null`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Frame {
    /// Column names, in request order.
    pub columns: Vec<String>,
    /// One entry per row, each as long as `columns`.
    pub rows: Vec<Vec<Value>>,
}

impl Frame {
    /// The position of column `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|column| column == name)
    }

    /// Puts the columns named in `order` first, in that order (the others after them, as
    /// they were).
    fn reorder(&mut self, order: &[String]) {
        let mut positions: Vec<usize> = order
            .iter()
            .filter_map(|name| self.column_index(name))
            .collect();
        let rest: Vec<usize> = (0..self.columns.len())
            .filter(|i| !positions.contains(i))
            .collect();
        positions.extend(rest);
        self.columns = positions.iter().map(|&i| self.columns[i].clone()).collect();
        for row in &mut self.rows {
            *row = positions.iter().map(|&i| row[i].clone()).collect();
        }
    }

    /// Builds a frame from records (objects keyed by column), columns in first-seen order.
    fn from_records(records: &[Value], key: &str) -> Result<Self, ApiError> {
        let mut frame = Frame::default();
        for (row, record) in records.iter().enumerate() {
            let Value::Object(record) = record else {
                return Err(ApiError::bad_request(format!(
                    "{key}[{row}] must be an object of column values, got {}",
                    json_kind(record)
                )));
            };
            for name in record.keys() {
                if frame.column_index(name).is_none() {
                    frame.columns.push(name.clone());
                }
            }
        }
        frame.rows = records
            .iter()
            .filter_map(Value::as_object)
            .map(|record| {
                frame
                    .columns
                    .iter()
                    .map(|name| record.get(name).cloned().unwrap_or(Value::Null))
                    .collect()
            })
            .collect();
        Ok(frame)
    }
}

/// Parses a JSON `/invocations` body: `value` is `body` decoded. Records and dicts of columns
/// keep their columns in the order the body sends them, as a pandas DataFrame does (a decoded
/// [`Value`] sorts object keys; a model without a signature takes its features in column
/// order).
pub fn parse_body(value: Value, body: &[u8]) -> Result<ScoringRequest, ApiError> {
    let mut request = parse_value(value)?;
    if let ScoringInput::Frame(frame) = &mut request.input
        && let Ok(order) = serde_json::from_slice::<ColumnOrders>(body)
        && let Some(ColumnOrder(columns)) =
            order.dataframe_records.or(order.instances).or(order.inputs)
    {
        frame.reorder(&columns);
    }
    Ok(request)
}

/// The column names of each input key that can carry records or columns, in body order.
#[derive(serde::Deserialize)]
struct ColumnOrders {
    #[serde(default)]
    dataframe_records: Option<ColumnOrder>,
    #[serde(default)]
    instances: Option<ColumnOrder>,
    #[serde(default)]
    inputs: Option<ColumnOrder>,
}

/// The keys of an object, or of a list's objects in first-seen order, as the body has them.
struct ColumnOrder(Vec<String>);

impl<'de> serde::Deserialize<'de> for ColumnOrder {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ColumnOrderVisitor)
    }
}

struct ColumnOrderVisitor;

impl<'de> serde::de::Visitor<'de> for ColumnOrderVisitor {
    type Value = ColumnOrder;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<ColumnOrder, A::Error> {
        let mut keys: Vec<String> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            map.next_value::<serde::de::IgnoredAny>()?;
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
        Ok(ColumnOrder(keys))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ColumnOrder, A::Error> {
        let mut keys: Vec<String> = Vec::new();
        while let Some(ColumnOrder(row)) = seq.next_element::<ColumnOrder>()? {
            for key in row {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        }
        Ok(ColumnOrder(keys))
    }

    fn visit_bool<E>(self, _: bool) -> Result<ColumnOrder, E> {
        Ok(ColumnOrder(Vec::new()))
    }
    fn visit_i64<E>(self, _: i64) -> Result<ColumnOrder, E> {
        Ok(ColumnOrder(Vec::new()))
    }
    fn visit_u64<E>(self, _: u64) -> Result<ColumnOrder, E> {
        Ok(ColumnOrder(Vec::new()))
    }
    fn visit_f64<E>(self, _: f64) -> Result<ColumnOrder, E> {
        Ok(ColumnOrder(Vec::new()))
    }
    fn visit_str<E>(self, _: &str) -> Result<ColumnOrder, E> {
        Ok(ColumnOrder(Vec::new()))
    }
    fn visit_unit<E>(self) -> Result<ColumnOrder, E> {
        Ok(ColumnOrder(Vec::new()))
    }
}

/// Parses an already decoded JSON `/invocations` body.
pub fn parse_value(value: Value) -> Result<ScoringRequest, ApiError> {
    let mut body = match value {
        Value::Object(body) => body,
        Value::Array(_) => {
            return Err(ApiError::bad_request(format!(
                "received a bare list; wrap it in an object with one of {}",
                INPUT_KEYS.join(", ")
            )));
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "the body must be a JSON object with one of {}, got {}",
                INPUT_KEYS.join(", "),
                json_kind(&other)
            )));
        }
    };
    let present: Vec<&str> = INPUT_KEYS
        .iter()
        .copied()
        .filter(|key| body.contains_key(*key))
        .collect();
    let key = match present.as_slice() {
        [key] => *key,
        [] => {
            return Err(ApiError::bad_request(format!(
                "the body has none of the input keys {}",
                INPUT_KEYS.join(", ")
            )));
        }
        several => {
            return Err(ApiError::bad_request(format!(
                "the body has several input keys ({}); send exactly one",
                several.join(", ")
            )));
        }
    };
    if let Some(unknown) = body
        .keys()
        .find(|name| *name != key && !ALLOWED_EXTRA_KEYS.contains(&name.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "unknown key `{unknown}` beside `{key}`; allowed: {}",
            ALLOWED_EXTRA_KEYS.join(", ")
        )));
    }
    let params = match body.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(params)) => params,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`params` must be an object, got {}",
                json_kind(&other)
            )));
        }
    };
    let data = body.remove(key).unwrap_or(Value::Null);
    let input = match key {
        "dataframe_split" => parse_split(data)?,
        "dataframe_records" => parse_records(data)?,
        "instances" => parse_instances(data)?,
        _ => parse_inputs(data)?,
    };
    if input.is_empty() {
        return Err(ApiError::invalid(format!(
            "`{key}` holds no rows; send at least one"
        )));
    }
    let layout = match key {
        "dataframe_split" | "dataframe_records" => InputLayout::DataFrame,
        _ => InputLayout::Tensor,
    };
    Ok(ScoringRequest {
        input,
        params,
        layout,
    })
}

/// `dataframe_split`: `{"columns": [...], "data": [[...], ...], "index": [...]?}`.
fn parse_split(data: Value) -> Result<ScoringInput, ApiError> {
    let Value::Object(mut split) = data else {
        return Err(ApiError::bad_request(format!(
            "`dataframe_split` must be an object with `columns` and `data`, got {}",
            json_kind(&data)
        )));
    };
    let rows = match split.remove("data") {
        Some(Value::Array(rows)) => rows,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`dataframe_split.data` must be a list of rows, got {}",
                json_kind(&other)
            )));
        }
        None => return Err(ApiError::bad_request("`dataframe_split` has no `data`")),
    };
    let columns = match split.remove("columns") {
        None | Some(Value::Null) => return Ok(ScoringInput::Rows(rows)),
        Some(Value::Array(columns)) => columns
            .into_iter()
            .map(|column| match column {
                Value::String(name) => name,
                other => other.to_string(),
            })
            .collect::<Vec<_>>(),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`dataframe_split.columns` must be a list of names, got {}",
                json_kind(&other)
            )));
        }
    };
    let rows = rows
        .into_iter()
        .enumerate()
        .map(|(index, row)| match row {
            Value::Array(cells) if cells.len() == columns.len() => Ok(cells),
            Value::Array(cells) => Err(ApiError::invalid(format!(
                "`dataframe_split.data[{index}]` has {} values but there are {} columns",
                cells.len(),
                columns.len()
            ))),
            other => Err(ApiError::bad_request(format!(
                "`dataframe_split.data[{index}]` must be a list of values, got {}",
                json_kind(&other)
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ScoringInput::Frame(Frame { columns, rows }))
}

/// `dataframe_records`: `[{"column": value, ...}, ...]`.
fn parse_records(data: Value) -> Result<ScoringInput, ApiError> {
    match data {
        Value::Array(records) => Ok(ScoringInput::Frame(Frame::from_records(
            &records,
            "dataframe_records",
        )?)),
        other => Err(ApiError::bad_request(format!(
            "`dataframe_records` must be a list of objects, got {}",
            json_kind(&other)
        ))),
    }
}

/// `instances`: a list of rows, or a list of objects (records).
fn parse_instances(data: Value) -> Result<ScoringInput, ApiError> {
    match data {
        Value::Array(rows) if !rows.is_empty() && rows.iter().all(Value::is_object) => Ok(
            ScoringInput::Frame(Frame::from_records(&rows, "instances")?),
        ),
        Value::Array(rows) => Ok(ScoringInput::Rows(rows)),
        other => Err(ApiError::bad_request(format!(
            "`instances` must be a list, got {}",
            json_kind(&other)
        ))),
    }
}

/// `inputs`: a list of rows (records, when every row is an object, as for `instances`), a dict
/// of columns (each a list, or one value for one row), or a single value (one row).
fn parse_inputs(data: Value) -> Result<ScoringInput, ApiError> {
    match data {
        Value::Array(rows) if !rows.is_empty() && rows.iter().all(Value::is_object) => {
            Ok(ScoringInput::Frame(Frame::from_records(&rows, "inputs")?))
        }
        Value::Array(rows) => Ok(ScoringInput::Rows(rows)),
        Value::Object(columns) => {
            let lengths: Vec<usize> = columns
                .values()
                .map(|column| column.as_array().map_or(1, Vec::len))
                .collect();
            let rows = lengths.first().copied().unwrap_or(0);
            if let Some((name, length)) = columns
                .keys()
                .zip(&lengths)
                .find(|(_, length)| **length != rows)
            {
                return Err(ApiError::invalid(format!(
                    "`inputs` column `{name}` has {length} values but the first column has {rows}"
                )));
            }
            let names: Vec<String> = columns.keys().cloned().collect();
            let cells: Vec<Vec<Value>> = columns
                .into_iter()
                .map(|(_, column)| match column {
                    Value::Array(values) => values,
                    single => vec![single],
                })
                .collect();
            let rows = (0..rows)
                .map(|row| cells.iter().map(|column| column[row].clone()).collect())
                .collect();
            Ok(ScoringInput::Frame(Frame {
                columns: names,
                rows,
            }))
        }
        Value::Null => Err(ApiError::bad_request("`inputs` is null")),
        single => Ok(ScoringInput::Rows(vec![single])),
    }
}

/// Parses a CSV body with a header row. Cells that read as numbers become numbers, empty cells
/// become `null`, everything else stays a string; the signature check converts from there.
pub fn parse_csv(body: &[u8]) -> Result<ScoringRequest, ApiError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(body);
    let columns: Vec<String> = reader
        .headers()
        .map_err(|error| ApiError::bad_request(format!("malformed CSV header: {error}")))?
        .iter()
        .map(str::to_string)
        .collect();
    if columns.iter().all(String::is_empty) {
        return Err(ApiError::invalid(
            "the CSV body is empty; send a header row and data rows",
        ));
    }
    let mut rows = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let record = record.map_err(|error| {
            ApiError::bad_request(format!("malformed CSV at data row {}: {error}", index + 1))
        })?;
        rows.push(record.iter().map(csv_cell).collect());
    }
    if rows.is_empty() {
        return Err(ApiError::invalid(
            "the CSV body has a header but no data rows",
        ));
    }
    Ok(ScoringRequest {
        input: ScoringInput::Frame(Frame { columns, rows }),
        params: Map::new(),
        layout: InputLayout::DataFrame,
    })
}

fn csv_cell(cell: &str) -> Value {
    let trimmed = cell.trim();
    if trimmed.is_empty() {
        return Value::Null;
    }
    if let Ok(integer) = trimmed.parse::<i64>() {
        return Value::from(integer);
    }
    match trimmed
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
    {
        Some(number) => Value::Number(number),
        None => Value::String(cell.to_string()),
    }
}

/// A short name of a JSON value's kind, for error messages.
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn records_and_column_dicts_keep_the_order_the_body_sends() {
        for body in [
            r#"{"dataframe_records": [{"z": 1, "a": 2}, {"m": 3, "z": 4}]}"#,
            r#"{"instances": [{"z": 1, "a": 2}, {"m": 3, "z": 4}]}"#,
            r#"{"inputs": [{"z": 1, "a": 2}, {"m": 3, "z": 4}]}"#,
        ] {
            let value: Value = serde_json::from_str(body).unwrap();
            let ScoringInput::Frame(frame) = parse_body(value, body.as_bytes()).unwrap().input
            else {
                panic!("{body}: a frame")
            };
            assert_eq!(frame.columns, ["z", "a", "m"], "{body}");
            assert_eq!(
                frame.rows,
                [
                    vec![json!(1), json!(2), Value::Null],
                    vec![json!(4), Value::Null, json!(3)]
                ],
                "{body}"
            );
        }
        let body = r#"{"inputs": {"z": [1, 2], "a": [3, 4]}}"#;
        let value: Value = serde_json::from_str(body).unwrap();
        let ScoringInput::Frame(frame) = parse_body(value, body.as_bytes()).unwrap().input else {
            panic!("a frame")
        };
        assert_eq!(frame.columns, ["z", "a"]);
        assert_eq!(frame.rows[1], [json!(2), json!(4)]);
    }

    fn parse(value: Value) -> Result<ScoringRequest, ApiError> {
        parse_value(value)
    }

    fn frame(request: ScoringRequest) -> Frame {
        match request.input {
            ScoringInput::Frame(frame) => frame,
            ScoringInput::Rows(rows) => panic!("expected a frame, got rows {rows:?}"),
        }
    }

    #[test]
    fn every_tabular_form_gives_the_same_frame() {
        let expected = Frame {
            columns: vec!["a".into(), "b".into()],
            rows: vec![vec![json!(1), json!("x")], vec![json!(2), json!("y")]],
        };
        let split =
            json!({"dataframe_split": {"columns": ["a", "b"], "data": [[1, "x"], [2, "y"]]}});
        let records = json!({"dataframe_records": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]});
        let instances = json!({"instances": [{"a": 1, "b": "x"}, {"a": 2, "b": "y"}]});
        let inputs = json!({"inputs": {"a": [1, 2], "b": ["x", "y"]}});
        for body in [split, records, instances, inputs] {
            assert_eq!(frame(parse(body.clone()).unwrap()), expected, "{body}");
        }
        let csv = parse_csv(b"a,b\n1,x\n2,y\n").unwrap();
        assert_eq!(frame(csv), expected);
    }

    #[test]
    fn lists_are_rows_and_params_are_kept() {
        let request = parse(json!({"instances": [[1, 2], [3, 4]], "params": {"k": 1}})).unwrap();
        assert_eq!(
            request.input,
            ScoringInput::Rows(vec![json!([1, 2]), json!([3, 4])])
        );
        assert_eq!(request.params["k"], json!(1));
    }

    #[test]
    fn protocol_errors_say_what_is_wrong() {
        let message = |value: Value| parse(value).unwrap_err().message;
        assert!(message(json!([1, 2])).contains("bare list"));
        assert!(message(json!({"x": 1})).contains("none of the input keys"));
        assert!(message(json!({"inputs": [1], "instances": [1]})).contains("several"));
        assert!(message(json!({"inputs": []})).contains("no rows"));
        assert!(
            message(json!({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}))
                .contains("has 2 values but there are 1 columns")
        );
        assert!(parse_csv(b"").unwrap_err().message.contains("empty"));
    }
}
