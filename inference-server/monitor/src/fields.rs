//! Monitored fields: where each value is in a recorded request or response, and how one row of
//! the inference table becomes its instances (one per item of a batch request).
//!
//! Pure: a row's bodies in, one value per field and instance out.

use serde_json::Value;
use sluice_crds::{FieldKind, MonitoringConfig, ProblemType};

/// Which body a path starts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Body {
    /// The recorded request.
    Request,
    /// The recorded response (reassembled when streamed).
    Response,
    /// The newest feedback on the request (`{label, rating, comment}`, from the feedback
    /// table).
    Feedback,
}

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Step {
    Key(String),
    Index(usize),
    /// The instance axis: every item of an array.
    Each,
}

/// Where a field's value is.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Source {
    /// An explicit path.
    Path { body: Body, steps: Vec<Step> },
    /// A column of that name in any MLflow request format.
    MlflowColumn(String),
    /// Characters of the text a language model was given (prompt, messages, input).
    InputChars,
    /// Characters of the text it answered (choices' text or message content).
    OutputChars,
    /// 1 when the model refused (a choice's `message.refusal`), else 0.
    Refused,
}

/// A field the monitor profiles: its output column name, kind and source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// The name in the output tables (`column_name`).
    pub name: String,
    /// Numeric or categorical.
    pub kind: FieldKind,
    /// Which role it plays (quality metrics pair the prediction with the label).
    pub role: Role,
    source: Source,
}

/// What a field is to the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An input.
    Feature,
    /// The model's answer.
    Prediction,
    /// The probability of the answer.
    Probability,
    /// The true answer.
    Label,
}

/// A monitor configuration that cannot be used, naming the part that is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FieldError {
    /// A path that does not parse.
    #[error("{field}: path {path:?} {problem}")]
    Path {
        /// The field's name.
        field: String,
        /// The path as written.
        path: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Two fields with one name.
    #[error("two monitored fields are named {0:?}")]
    Duplicate(String),
    /// Nothing to monitor.
    #[error("the monitor names no field: set features, prediction or a text problem type")]
    Empty,
}

fn parse_path(field: &str, path: &str) -> Result<Source, FieldError> {
    let problem = |problem| FieldError::Path {
        field: field.to_string(),
        path: path.to_string(),
        problem,
    };
    if let Some(key) = path.strip_prefix("feedback.") {
        return match key {
            "label" | "rating" | "comment" => Ok(Source::Path {
                body: Body::Feedback,
                steps: vec![Step::Key(key.to_string())],
            }),
            _ => Err(problem(
                "reads feedback, which has only `label`, `rating` and `comment`",
            )),
        };
    }
    let (body, mut rest) = if let Some(rest) = path.strip_prefix("request") {
        (Body::Request, rest)
    } else if let Some(rest) = path.strip_prefix("response") {
        (Body::Response, rest)
    } else {
        return Err(problem(
            "must start with `request`, `response` or `feedback.`",
        ));
    };
    let mut steps = Vec::new();
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end == 0 {
                return Err(problem("has an empty key"));
            }
            steps.push(Step::Key(after[..end].to_string()));
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let end = after
                .find(']')
                .ok_or_else(|| problem("has an unclosed `[`"))?;
            let inside = &after[..end];
            steps.push(if inside == "*" {
                Step::Each
            } else {
                Step::Index(
                    inside
                        .parse()
                        .map_err(|_| problem("has an index that is not `*` or a number"))?,
                )
            });
            rest = &after[end + 1..];
        } else {
            return Err(problem("has a step that is neither `.key` nor `[index]`"));
        }
    }
    if steps.iter().filter(|step| **step == Step::Each).count() > 1 {
        return Err(problem("has more than one `[*]`"));
    }
    Ok(Source::Path { body, steps })
}

/// The fields a configuration monitors, in output order.
pub fn fields(config: &MonitoringConfig) -> Result<Vec<Field>, FieldError> {
    let problem = config.problem_type.unwrap_or_default();
    let answer_kind = match problem {
        ProblemType::Regression => FieldKind::Numeric,
        _ => FieldKind::Categorical,
    };
    let mut out = Vec::new();
    let mut push =
        |spec: &sluice_crds::MonitoredField, role: Role, default_kind, default_source: Source| {
            let source = match &spec.path {
                Some(path) => parse_path(&spec.name, path)?,
                None => default_source,
            };
            out.push(Field {
                name: spec.name.clone(),
                kind: spec.kind.unwrap_or(default_kind),
                role,
                source,
            });
            Ok::<_, FieldError>(())
        };
    for feature in &config.features {
        push(
            feature,
            Role::Feature,
            FieldKind::Numeric,
            Source::MlflowColumn(feature.name.clone()),
        )?;
    }
    let predictions = || Source::Path {
        body: Body::Response,
        steps: vec![Step::Key("predictions".into()), Step::Each],
    };
    if let Some(prediction) = &config.prediction {
        push(prediction, Role::Prediction, answer_kind, predictions())?;
    }
    if let Some(probability) = &config.probability {
        push(
            probability,
            Role::Probability,
            FieldKind::Numeric,
            predictions(),
        )?;
    }
    if let Some(label) = &config.label {
        push(
            label,
            Role::Label,
            answer_kind,
            Source::MlflowColumn(label.name.clone()),
        )?;
    }
    if matches!(
        problem,
        ProblemType::TextGeneration | ProblemType::Embeddings
    ) {
        for (name, source) in [
            ("input_chars", Source::InputChars),
            ("output_chars", Source::OutputChars),
            ("refusal", Source::Refused),
        ] {
            if problem == ProblemType::Embeddings && source != Source::InputChars {
                continue;
            }
            if !out.iter().any(|field| field.name == name) {
                out.push(Field {
                    name: name.into(),
                    kind: FieldKind::Numeric,
                    role: Role::Feature,
                    source,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(FieldError::Empty);
    }
    for (i, field) in out.iter().enumerate() {
        if out[..i].iter().any(|other| other.name == field.name) {
            return Err(FieldError::Duplicate(field.name.clone()));
        }
    }
    Ok(out)
}

/// Whether any field reads the feedback table.
pub fn reads_feedback(fields: &[Field]) -> bool {
    fields.iter().any(|field| {
        matches!(
            field.source,
            Source::Path {
                body: Body::Feedback,
                ..
            }
        )
    })
}

/// One value of one field of one instance.
#[derive(Clone, Debug, PartialEq)]
pub enum Cell {
    /// Absent, JSON null, or not readable as the field's kind.
    Null,
    /// A number (numeric fields).
    Number(f64),
    /// A category (categorical fields).
    Text(String),
}

/// Where a value was found: one for the whole request, or one per instance.
enum Found<'a> {
    One(Option<&'a Value>),
    Each(Vec<&'a Value>),
}

fn walk<'a>(mut value: &'a Value, steps: &[Step]) -> Found<'a> {
    for (i, step) in steps.iter().enumerate() {
        value = match step {
            Step::Key(key) => match value.get(key) {
                Some(next) => next,
                None => return Found::One(None),
            },
            Step::Index(index) => match value.get(index) {
                Some(next) => next,
                None => return Found::One(None),
            },
            Step::Each => {
                let Some(items) = value.as_array() else {
                    return Found::Each(Vec::new());
                };
                let rest = &steps[i + 1..];
                return Found::Each(
                    items
                        .iter()
                        .map(|item| match walk(item, rest) {
                            Found::One(Some(found)) => found,
                            _ => &Value::Null,
                        })
                        .collect(),
                );
            }
        };
    }
    Found::One(Some(value))
}

/// The values of column `name` in an MLflow request body, one per row of its data frame.
fn mlflow_column<'a>(request: &'a Value, name: &str) -> Found<'a> {
    let records = |items: &'a Vec<Value>| {
        Found::Each(
            items
                .iter()
                .map(|item| item.get(name).unwrap_or(&Value::Null))
                .collect(),
        )
    };
    if let Some(Value::Array(items)) = request.get("dataframe_records") {
        return records(items);
    }
    if let Some(split) = request.get("dataframe_split") {
        let index = split
            .get("columns")
            .and_then(Value::as_array)
            .and_then(|columns| {
                columns
                    .iter()
                    .position(|column| column.as_str() == Some(name))
            });
        let data = split.get("data").and_then(Value::as_array);
        return match (index, data) {
            (Some(index), Some(rows)) => Found::Each(
                rows.iter()
                    .map(|row| row.get(index).unwrap_or(&Value::Null))
                    .collect(),
            ),
            (None, Some(rows)) => Found::Each(vec![&Value::Null; rows.len()]),
            _ => Found::Each(Vec::new()),
        };
    }
    for key in ["instances", "inputs"] {
        match request.get(key) {
            Some(Value::Array(items)) => return records(items),
            Some(Value::Object(columns)) => {
                return match columns.get(name) {
                    Some(Value::Array(values)) => Found::Each(values.iter().collect()),
                    other => Found::One(other),
                };
            }
            _ => {}
        }
    }
    Found::One(request.get(name))
}

/// Characters of the strings under `value` (a prompt, a list of messages with `content` as
/// text or parts, an embeddings `input`).
fn text_chars(value: &Value) -> usize {
    match value {
        Value::String(text) => text.chars().count(),
        Value::Array(items) => items.iter().map(text_chars).sum(),
        Value::Object(object) => ["content", "text"]
            .iter()
            .filter_map(|key| object.get(*key))
            .map(text_chars)
            .sum(),
        _ => 0,
    }
}

fn input_chars(request: &Value) -> Option<f64> {
    ["messages", "prompt", "input"]
        .iter()
        .find_map(|key| request.get(*key))
        .map(|value| text_chars(value) as f64)
}

fn output_chars(response: &Value) -> Option<f64> {
    let choices = response.get("choices")?.as_array()?;
    Some(
        choices
            .iter()
            .map(|choice| {
                choice.get("text").map(text_chars).unwrap_or(0)
                    + choice
                        .get("message")
                        .and_then(|message| message.get("content"))
                        .map(text_chars)
                        .unwrap_or(0)
            })
            .sum::<usize>() as f64,
    )
}

/// 1 when a choice of a chat answer is a refusal (OpenAI's `message.refusal`, kept by the
/// capture sidecar when it reassembles a stream), 0 when none is; `None` for other answers.
fn refused(response: &Value) -> Option<f64> {
    let choices = response.get("choices")?.as_array()?;
    let refusal = choices.iter().any(|choice| {
        choice
            .get("message")
            .and_then(|message| message.get("refusal"))
            .is_some_and(|refusal| refusal.as_str().is_some_and(|text| !text.is_empty()))
    });
    Some(f64::from(u8::from(refusal)))
}

fn cell(value: Option<&Value>, kind: FieldKind) -> Cell {
    match (value, kind) {
        (None | Some(Value::Null), _) => Cell::Null,
        (Some(Value::Number(number)), FieldKind::Numeric) => {
            number.as_f64().map_or(Cell::Null, Cell::Number)
        }
        (Some(Value::String(text)), FieldKind::Numeric) => {
            text.trim().parse().map_or(Cell::Null, Cell::Number)
        }
        (Some(Value::Bool(flag)), FieldKind::Numeric) => Cell::Number(f64::from(u8::from(*flag))),
        (Some(Value::String(text)), FieldKind::Categorical) => Cell::Text(text.clone()),
        (Some(other), FieldKind::Categorical) => Cell::Text(other.to_string()),
        (Some(_), FieldKind::Numeric) => Cell::Null,
    }
}

/// The instances of one recorded exchange: `cells[field][instance]`. A request counts as one
/// instance when no field has an instance axis; fields of one value per request repeat it in
/// every instance, and an instance a field has no value for is null there.
pub fn instances(
    fields: &[Field],
    request: Option<&str>,
    response: Option<&str>,
    feedback: Option<&Value>,
) -> Vec<Vec<Cell>> {
    let parse = |body: Option<&str>| body.and_then(|text| serde_json::from_str::<Value>(text).ok());
    let needs = |wanted: Body| {
        fields.iter().any(|field| match &field.source {
            Source::Path { body, .. } => *body == wanted,
            Source::MlflowColumn(_) | Source::InputChars => wanted == Body::Request,
            Source::OutputChars | Source::Refused => wanted == Body::Response,
        })
    };
    let request = if needs(Body::Request) {
        parse(request)
    } else {
        None
    };
    let response = if needs(Body::Response) {
        parse(response)
    } else {
        None
    };
    let found: Vec<Result<Found<'_>, Option<f64>>> = fields
        .iter()
        .map(|field| match &field.source {
            Source::Path { body, steps } => Ok(match (body, &request, &response, feedback) {
                (Body::Request, Some(root), _, _) | (Body::Response, _, Some(root), _) => {
                    walk(root, steps)
                }
                (Body::Feedback, _, _, Some(root)) => walk(root, steps),
                _ => Found::One(None),
            }),
            Source::MlflowColumn(name) => Ok(request
                .as_ref()
                .map_or(Found::One(None), |root| mlflow_column(root, name))),
            Source::InputChars => Err(request.as_ref().and_then(input_chars)),
            Source::OutputChars => Err(response.as_ref().and_then(output_chars)),
            Source::Refused => Err(response.as_ref().and_then(refused)),
        })
        .collect();
    let count = found
        .iter()
        .filter_map(|found| match found {
            Ok(Found::Each(values)) => Some(values.len()),
            _ => None,
        })
        .max()
        .unwrap_or(1);
    fields
        .iter()
        .zip(found)
        .map(|(field, found)| match found {
            Ok(Found::Each(values)) => (0..count)
                .map(|i| cell(values.get(i).copied(), field.kind))
                .collect(),
            Ok(Found::One(value)) => vec![cell(value, field.kind); count],
            Err(number) => vec![number.map_or(Cell::Null, Cell::Number); count],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_crds::MonitoredField;

    fn field(name: &str, path: Option<&str>, kind: Option<FieldKind>) -> MonitoredField {
        MonitoredField {
            name: name.into(),
            path: path.map(Into::into),
            kind,
        }
    }

    fn config(features: Vec<MonitoredField>) -> MonitoringConfig {
        MonitoringConfig {
            features,
            prediction: Some(field("prediction", None, None)),
            ..Default::default()
        }
    }

    #[test]
    fn every_mlflow_request_format_gives_the_same_instances() {
        let fields = fields(&config(vec![
            field("amount", None, None),
            field("merchant", None, Some(FieldKind::Categorical)),
        ]))
        .unwrap();
        let response = r#"{"predictions": [1, 0]}"#;
        let expected = vec![
            vec![Cell::Number(12.5), Cell::Number(3.0)],
            vec![Cell::Text("shop".into()), Cell::Text("7".into())],
            vec![Cell::Text("1".into()), Cell::Text("0".into())],
        ];
        for request in [
            r#"{"dataframe_records": [{"amount": 12.5, "merchant": "shop"}, {"amount": 3, "merchant": 7}]}"#,
            r#"{"dataframe_split": {"columns": ["merchant", "amount"], "data": [["shop", 12.5], [7, 3]]}}"#,
            r#"{"instances": [{"amount": "12.5", "merchant": "shop"}, {"amount": 3, "merchant": 7}]}"#,
            r#"{"inputs": {"amount": [12.5, 3], "merchant": ["shop", 7]}}"#,
        ] {
            assert_eq!(
                instances(&fields, Some(request), Some(response), None),
                expected,
                "{request}"
            );
        }
    }

    #[test]
    fn paths_pick_values_and_pad_missing_instances_with_nulls() {
        let fields = fields(&MonitoringConfig {
            features: vec![
                field("x", Some("request.rows[*].x"), None),
                field(
                    "user",
                    Some("request.meta.user"),
                    Some(FieldKind::Categorical),
                ),
            ],
            prediction: Some(field(
                "score",
                Some("response.out[*][0]"),
                Some(FieldKind::Numeric),
            )),
            ..Default::default()
        })
        .unwrap();
        let got = instances(
            &fields,
            Some(r#"{"rows": [{"x": 1}, {"x": null}, {"y": 2}], "meta": {"user": "ann"}}"#),
            Some(r#"{"out": [[0.5], [0.25]]}"#),
            None,
        );
        assert_eq!(
            got,
            vec![
                vec![Cell::Number(1.0), Cell::Null, Cell::Null],
                vec![Cell::Text("ann".into()); 3],
                vec![Cell::Number(0.5), Cell::Number(0.25), Cell::Null],
            ]
        );
        // A body that is not JSON: one instance of nulls, nothing dropped.
        assert_eq!(
            instances(&fields, Some("not json"), None, None),
            vec![vec![Cell::Null]; 3]
        );
    }

    #[test]
    fn feedback_fields_read_the_newest_feedback_in_every_instance() {
        let fields = fields(&MonitoringConfig {
            features: vec![field("amount", None, None)],
            label: Some(field("label", Some("feedback.label"), None)),
            ..Default::default()
        })
        .unwrap();
        assert!(reads_feedback(&fields));
        let feedback = serde_json::json!({"label": "1", "rating": null});
        let got = instances(
            &fields,
            Some(r#"{"dataframe_records": [{"amount": 3}, {"amount": 4}]}"#),
            None,
            Some(&feedback),
        );
        assert_eq!(got[1], vec![Cell::Text("1".into()); 2]);
        // No feedback yet: a null label, the request still counted.
        let got = instances(
            &fields,
            Some(r#"{"dataframe_records": [{"amount": 3}]}"#),
            None,
            None,
        );
        assert_eq!(got, vec![vec![Cell::Number(3.0)], vec![Cell::Null]]);
    }

    #[test]
    fn text_models_get_their_lengths() {
        let fields = fields(&MonitoringConfig {
            problem_type: Some(ProblemType::TextGeneration),
            ..Default::default()
        })
        .unwrap();
        let got = instances(
            &fields,
            Some(
                r#"{"messages": [{"role": "user", "content": "héllo"}, {"role": "user", "content": [{"type": "text", "text": "ab"}]}]}"#,
            ),
            Some(r#"{"choices": [{"message": {"role": "assistant", "content": "four"}}]}"#),
            None,
        );
        assert_eq!(
            got,
            vec![
                vec![Cell::Number(7.0)],
                vec![Cell::Number(4.0)],
                vec![Cell::Number(0.0)]
            ]
        );
        let refusal = instances(
            &fields,
            Some(r#"{"messages": []}"#),
            Some(
                r#"{"choices": [{"message": {"role": "assistant", "content": null, "refusal": "I can't help with that."}}]}"#,
            ),
            None,
        );
        assert_eq!(refusal[2], vec![Cell::Number(1.0)]);
    }

    #[test]
    fn bad_configurations_name_what_is_wrong() {
        let bad = |path: &str| {
            fields(&config(vec![field("x", Some(path), None)]))
                .unwrap_err()
                .to_string()
        };
        assert!(bad("body.x").contains("must start with"));
        assert!(bad("request.a[*].b[*]").contains("more than one"));
        assert!(bad("request.a[x]").contains("index"));
        assert!(bad("request..a").contains("empty key"));
        assert!(bad("feedback.score").contains("only `label`, `rating` and `comment`"));
        assert_eq!(fields(&MonitoringConfig::default()), Err(FieldError::Empty));
        assert_eq!(
            fields(&config(vec![field("prediction", None, None)])),
            Err(FieldError::Duplicate("prediction".into()))
        );
    }
}
