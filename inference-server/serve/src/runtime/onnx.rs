//! ONNX graphs (tabular and classic ML) run with tract, micro-batched.
//!
//! Inputs: each graph input takes, per row, a fixed number of values (the product of its
//! dimensions past the batch axis). A single-input graph is fed from the row arrays of
//! `instances`/`inputs`, or from named columns (the signature's, in order, or the request's);
//! a multi-input graph takes one column per input, matched by name.
//!
//! Outputs: one prediction per row: the single output's row, or an object keyed by output
//! name when the graph has several (e.g. `{"label": 0, "probabilities": [...]}`).

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_protocol::ApiError;
use sluice_protocol::scoring::{Frame, ScoringInput, ScoringRequest, json_kind};
use tract_onnx::prelude::tract_ndarray::{ArrayD, IxDyn};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_hir::infer::Factoid;

use super::mlflow_answer;
use super::onnx_ml::{self, Labels};
use super::{LoadContext, LoadError};
use crate::batcher::Batcher;
use crate::model_dir::{AnswerShape, ModelSignature, ModelSpec};
use crate::signature;

type Plan = Arc<TypedRunnableModel>;

/// A loaded ONNX graph.
pub struct OnnxModel {
    inputs: Arc<Vec<GraphInput>>,
    signature: Option<ModelSignature>,
    batcher: Batcher<OnnxJob, Vec<Value>>,
    /// The graph's output names, in order.
    outputs: Vec<String>,
    /// Rows, or MLflow's answer (an `MLmodel` directory).
    answers: AnswerShape,
}

/// One input of the graph.
#[derive(Clone, Debug)]
struct GraphInput {
    name: String,
    datum: DatumType,
    /// Dimensions past the batch axis; `None` where symbolic.
    inner: Vec<Option<usize>>,
}

impl GraphInput {
    /// Values per row, when every inner dimension is known.
    fn row_width(&self) -> Option<usize> {
        self.inner
            .iter()
            .try_fold(1, |width, dim| dim.map(|dim| width * dim))
    }
}

/// The rows of one request, flattened per graph input.
struct OnnxJob {
    columns: Vec<Column>,
    rows: usize,
}

/// The values of one graph input, row after row, in the input's element type.
#[derive(Clone, Debug)]
enum Column {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    Bool(Vec<bool>),
    Text(Vec<String>),
}

impl Column {
    fn for_datum(datum: DatumType) -> Option<Self> {
        Some(match datum {
            DatumType::F32 => Self::F32(Vec::new()),
            DatumType::F64 => Self::F64(Vec::new()),
            DatumType::I64 => Self::I64(Vec::new()),
            DatumType::I32 => Self::I32(Vec::new()),
            DatumType::Bool => Self::Bool(Vec::new()),
            DatumType::String => Self::Text(Vec::new()),
            _ => return None,
        })
    }

    fn push(&mut self, value: &Value) -> Result<(), String> {
        // A missing value (`null`) of a float input is NaN, as pandas reads it for MLflow's
        // scoring server (an imputer in the graph fills it in).
        let number = || match value {
            Value::Null => Ok(f64::NAN),
            _ => value
                .as_f64()
                .ok_or_else(|| format!("expected a number, got {}", json_kind(value))),
        };
        let integer = || {
            value
                .as_i64()
                .ok_or_else(|| format!("expected an integer, got {value}"))
        };
        match self {
            Self::F32(values) => values.push(number()? as f32),
            Self::F64(values) => values.push(number()?),
            Self::I64(values) => values.push(integer()?),
            Self::I32(values) => values.push(
                i32::try_from(integer()?)
                    .map_err(|_| format!("{value} does not fit a 32-bit integer"))?,
            ),
            Self::Bool(values) => values.push(
                value
                    .as_bool()
                    .ok_or_else(|| format!("expected a boolean, got {}", json_kind(value)))?,
            ),
            Self::Text(values) => values.push(match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            }),
        }
        Ok(())
    }

    fn append(&mut self, other: Column) {
        match (self, other) {
            (Self::F32(a), Self::F32(b)) => a.extend(b),
            (Self::F64(a), Self::F64(b)) => a.extend(b),
            (Self::I64(a), Self::I64(b)) => a.extend(b),
            (Self::I32(a), Self::I32(b)) => a.extend(b),
            (Self::Bool(a), Self::Bool(b)) => a.extend(b),
            (Self::Text(a), Self::Text(b)) => a.extend(b),
            // Columns of one input always share its element type.
            _ => {}
        }
    }

    fn into_tensor(self, shape: &[usize]) -> TractResult<Tensor> {
        fn shaped<T: Datum>(shape: &[usize], values: Vec<T>) -> TractResult<Tensor> {
            Ok(ArrayD::from_shape_vec(IxDyn(shape), values)?.into_tensor())
        }
        match self {
            Self::F32(values) => shaped(shape, values),
            Self::F64(values) => shaped(shape, values),
            Self::I64(values) => shaped(shape, values),
            Self::I32(values) => shaped(shape, values),
            Self::Bool(values) => shaped(shape, values),
            Self::Text(values) => shaped(shape, values),
        }
    }
}

impl OnnxModel {
    /// Reads and optimises the graph on a blocking thread, then starts its batching worker.
    pub async fn load(spec: &ModelSpec, context: &LoadContext) -> Result<Self, LoadError> {
        let path =
            spec.files.model.clone().ok_or_else(|| {
                LoadError::Unsupported("an ONNX model needs `files.model`".into())
            })?;
        let (plan, inputs, outputs) = tokio::task::spawn_blocking(move || load_graph(&path))
            .await
            .map_err(|error| {
                LoadError::Unsupported(format!("the ONNX loader crashed: {error}"))
            })??;
        let inputs = Arc::new(inputs);
        let run_inputs = Arc::clone(&inputs);
        let output_names = outputs.iter().map(|output| output.name.clone()).collect();
        let batcher = Batcher::spawn(
            "onnx",
            context.batch,
            context.metrics.clone(),
            Arc::new(move |jobs: Vec<OnnxJob>| run_batch(&plan, &run_inputs, &outputs, jobs)),
        );
        Ok(Self {
            inputs,
            signature: spec.signature.clone(),
            batcher,
            outputs: output_names,
            answers: spec.answers,
        })
    }

    /// Scores the rows of `request`: one prediction per row, or MLflow's answer for an
    /// `MLmodel` directory.
    pub async fn predict(&self, request: ScoringRequest) -> Result<Value, ApiError> {
        if let Some(signature) = &self.signature {
            signature::check_input(signature, &request.input)?;
            signature::resolve_params(signature, request.params)?;
        } else if let Some(name) = request.params.keys().next() {
            return Err(ApiError::invalid(format!(
                "unknown param `{name}`: this model declares no params"
            )));
        }
        let job = self.job(&request.input)?;
        let rows = job.rows;
        let predictions = self.batcher.call(job, rows).await?;
        match self.answers {
            AnswerShape::Rows => Ok(Value::Array(predictions)),
            AnswerShape::Mlflow => {
                let input = mlflow_answer::pyfunc_input(self.signature.as_ref(), request.layout);
                mlflow_answer::answer(predictions, &self.outputs, input)
            }
        }
    }

    /// Flattens the request into one column per graph input.
    fn job(&self, input: &ScoringInput) -> Result<OnnxJob, ApiError> {
        let single = self.inputs.len() == 1;
        let columns = self
            .inputs
            .iter()
            .map(|graph_input| {
                let mut column = Column::for_datum(graph_input.datum).ok_or_else(|| {
                    ApiError::internal(format!(
                        "graph input `{}` has element type {:?}, which is not served",
                        graph_input.name, graph_input.datum
                    ))
                })?;
                let rows = self.row_values(graph_input, single, input)?;
                let width = graph_input
                    .row_width()
                    .or_else(|| rows.first().map(Vec::len))
                    .unwrap_or(1);
                for (row, values) in rows.iter().enumerate() {
                    if values.len() != width {
                        return Err(ApiError::invalid(format!(
                            "row {row}: the model input `{}` takes {width} values per row, got {}",
                            graph_input.name,
                            values.len()
                        )));
                    }
                    for value in values {
                        column.push(value).map_err(|problem| {
                            ApiError::invalid(format!(
                                "row {row}, input `{}`: {problem}",
                                graph_input.name
                            ))
                        })?;
                    }
                }
                Ok(column)
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        Ok(OnnxJob {
            columns,
            rows: input.len(),
        })
    }

    /// The values each row gives one graph input.
    fn row_values(
        &self,
        graph_input: &GraphInput,
        single: bool,
        input: &ScoringInput,
    ) -> Result<Vec<Vec<Value>>, ApiError> {
        match input {
            ScoringInput::Rows(rows) if single => Ok(rows.iter().map(flatten).collect()),
            ScoringInput::Rows(_) => Err(ApiError::invalid(format!(
                "this model has {} inputs ({}); send named columns (dataframe_split, dataframe_records or CSV)",
                self.inputs.len(),
                self.inputs
                    .iter()
                    .map(|input| input.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            ScoringInput::Frame(frame) => {
                if let Some(index) = frame.column_index(&graph_input.name) {
                    return Ok(frame.rows.iter().map(|row| flatten(&row[index])).collect());
                }
                if !single {
                    return Err(ApiError::invalid(format!(
                        "missing column `{}` for the model input of that name",
                        graph_input.name
                    )));
                }
                let features = self.feature_columns(frame)?;
                Ok(frame
                    .rows
                    .iter()
                    .map(|row| {
                        features
                            .iter()
                            .flat_map(|&index| flatten(&row[index]))
                            .collect()
                    })
                    .collect())
            }
        }
    }

    /// The columns that make up the feature vector of a single-input graph: the signature's
    /// named inputs in order, or every column of the request in its order.
    fn feature_columns(&self, frame: &Frame) -> Result<Vec<usize>, ApiError> {
        let named: Vec<&str> = self
            .signature
            .iter()
            .flat_map(|signature| &signature.inputs)
            .filter_map(|field| field.name.as_deref())
            .collect();
        if named.is_empty() {
            return Ok((0..frame.columns.len()).collect());
        }
        named
            .iter()
            .map(|name| {
                frame
                    .column_index(name)
                    .ok_or_else(|| ApiError::invalid(format!("missing required column `{name}`")))
            })
            .collect()
    }
}

/// A row value as a flat list: nested lists are flattened, a scalar is a list of one.
fn flatten(value: &Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items.iter().flat_map(flatten).collect(),
        scalar => vec![scalar.clone()],
    }
}

/// One output of the graph.
#[derive(Clone, Debug)]
struct GraphOutput {
    name: String,
    /// A `ZipMap`'s output: each row answered as `{label: probability}`.
    zip_map: Option<Labels>,
}

fn load_graph(path: &Path) -> Result<(Plan, Vec<GraphInput>, Vec<GraphOutput>), LoadError> {
    let invalid = |message: String| LoadError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    if !path.is_file() {
        return Err(LoadError::Read {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    let onnx = onnx_ml::onnx();
    let proto = onnx
        .proto_model_for_path(path)
        .map_err(|error| invalid(format!("not an ONNX model: {error:#}")))?;
    let zip_maps = onnx_ml::zip_maps(&proto);
    let model = onnx
        .model_for_proto_model(&proto)
        .and_then(with_symbolic_batch)
        .and_then(|model| model.into_optimized())
        .map_err(|error| invalid(format!("not a graph tract can run: {error:#}")))?;
    let inputs = model
        .input_outlets()
        .map_err(|error| invalid(error.to_string()))?
        .iter()
        .map(|outlet| {
            let fact = model
                .outlet_fact(*outlet)
                .map_err(|error| invalid(error.to_string()))?;
            let inner = fact
                .shape
                .iter()
                .skip(1)
                .map(|dim| DimLike::to_usize(dim).ok())
                .collect();
            Ok(GraphInput {
                name: model.node(outlet.node).name.clone(),
                datum: fact.datum_type,
                inner,
            })
        })
        .collect::<Result<Vec<_>, LoadError>>()?;
    let outputs = model
        .output_outlets()
        .map_err(|error| invalid(error.to_string()))?
        .iter()
        .map(|outlet| {
            // The graph's own output names (`label`, `probabilities`) survive as outlet labels.
            let name = model
                .outlet_label(*outlet)
                .map_or_else(|| model.node(outlet.node).name.clone(), str::to_string);
            let zip_map = zip_maps.get(&name).cloned();
            GraphOutput { name, zip_map }
        })
        .collect();
    let plan = model
        .into_runnable()
        .map_err(|error| invalid(format!("cannot plan the graph: {error:#}")))?;
    Ok((plan, inputs, outputs))
}

/// Names the batch axis: exporters such as skl2onnx leave the first dimension of each input
/// unnamed (`None`), which tract cannot type; it becomes the symbol `N`.
fn with_symbolic_batch(mut model: InferenceModel) -> TractResult<InferenceModel> {
    let batch = TDim::from(model.sym("N"));
    for index in 0..model.inputs.len() {
        let mut fact = model.input_fact(index)?.clone();
        let unknown_batch = fact
            .shape
            .dims()
            .next()
            .is_some_and(|dim| dim.concretize().is_none());
        if !fact.shape.is_open() && unknown_batch {
            fact.shape.set_dim(0, batch.clone());
            model.set_input_fact(index, fact)?;
        }
    }
    Ok(model)
}

/// Runs a batch as one graph call; if that fails, each job alone, so one bad request cannot
/// fail its neighbours.
fn run_batch(
    plan: &Plan,
    inputs: &[GraphInput],
    outputs: &[GraphOutput],
    jobs: Vec<OnnxJob>,
) -> Vec<Result<Vec<Value>, ApiError>> {
    let sizes: Vec<usize> = jobs.iter().map(|job| job.rows).collect();
    if jobs.len() > 1 {
        let merged = merge(
            jobs.iter()
                .map(|job| OnnxJob {
                    columns: job.columns.clone(),
                    rows: job.rows,
                })
                .collect(),
        );
        if let Ok(predictions) = run_job(plan, inputs, outputs, merged) {
            return split(predictions, &sizes);
        }
    }
    jobs.into_iter()
        .map(|job| run_job(plan, inputs, outputs, job))
        .collect()
}

fn merge(jobs: Vec<OnnxJob>) -> OnnxJob {
    let mut jobs = jobs.into_iter();
    let Some(mut merged) = jobs.next() else {
        return OnnxJob {
            columns: Vec::new(),
            rows: 0,
        };
    };
    for job in jobs {
        merged.rows += job.rows;
        for (column, more) in merged.columns.iter_mut().zip(job.columns) {
            column.append(more);
        }
    }
    merged
}

fn split(predictions: Vec<Value>, sizes: &[usize]) -> Vec<Result<Vec<Value>, ApiError>> {
    let mut predictions = predictions.into_iter();
    sizes
        .iter()
        .map(|&size| Ok(predictions.by_ref().take(size).collect()))
        .collect()
}

fn run_job(
    plan: &Plan,
    inputs: &[GraphInput],
    outputs: &[GraphOutput],
    job: OnnxJob,
) -> Result<Vec<Value>, ApiError> {
    let rows = job.rows;
    let tensors = job
        .columns
        .into_iter()
        .zip(inputs)
        .map(|(column, input)| {
            let width = input.row_width();
            let mut shape = vec![rows];
            match width {
                Some(_) => shape.extend(input.inner.iter().map(|dim| dim.unwrap_or(1))),
                None if input.inner.len() == 1 => shape.push(column_len(&column) / rows.max(1)),
                None => shape.extend(input.inner.iter().map(|dim| dim.unwrap_or(1))),
            }
            column.into_tensor(&shape).map(TValue::from)
        })
        .collect::<TractResult<TVec<TValue>>>()
        .map_err(|error| ApiError::invalid(format!("cannot shape the input tensors: {error:#}")))?;
    let results = plan
        .run(tensors)
        .map_err(|error| ApiError::internal(format!("the ONNX graph failed: {error:#}")))?;
    let per_output: Vec<Vec<Value>> = results
        .iter()
        .zip(outputs)
        .map(|(tensor, output)| {
            let rows = tensor_rows(tensor, rows)?;
            Ok(match &output.zip_map {
                Some(labels) => rows.into_iter().map(|row| zipped(row, labels)).collect(),
                None => rows,
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok((0..rows)
        .map(|row| match per_output.as_slice() {
            [only] => only[row].clone(),
            several => Value::Object(
                outputs
                    .iter()
                    .map(|output| output.name.clone())
                    .zip(several.iter().map(|values| values[row].clone()))
                    .collect::<Map<_, _>>(),
            ),
        })
        .collect())
}

/// A row of probabilities as `{label: probability}`, as a `ZipMap` makes it.
fn zipped(row: Value, labels: &Labels) -> Value {
    match row {
        Value::Array(values) => Value::Object(
            values
                .into_iter()
                .enumerate()
                .map(|(index, value)| (labels.key(index), value))
                .collect(),
        ),
        other => other,
    }
}

fn column_len(column: &Column) -> usize {
    match column {
        Column::F32(values) => values.len(),
        Column::F64(values) => values.len(),
        Column::I64(values) => values.len(),
        Column::I32(values) => values.len(),
        Column::Bool(values) => values.len(),
        Column::Text(values) => values.len(),
    }
}

/// Splits an output tensor into one JSON value per row (the batch axis is the first).
fn tensor_rows(tensor: &Tensor, rows: usize) -> Result<Vec<Value>, ApiError> {
    let shape = tensor.shape();
    if shape.first() != Some(&rows) {
        return Err(ApiError::internal(format!(
            "an output has shape {shape:?}; expected {rows} rows on the first axis"
        )));
    }
    fn values<T: Datum>(
        tensor: &Tensor,
        to_json: impl Fn(&T) -> Value,
    ) -> Result<Vec<Value>, ApiError> {
        let view = tensor
            .to_plain_array_view::<T>()
            .map_err(|error| ApiError::internal(format!("cannot read an output: {error:#}")))?;
        Ok(view.iter().map(to_json).collect())
    }
    let cast = |datum: DatumType| {
        tensor
            .cast_to_dt(datum)
            .map_err(|error| ApiError::internal(format!("cannot read an output: {error:#}")))
    };
    let flat: Vec<Value> = match tensor.datum_type() {
        DatumType::Bool => values::<bool>(tensor, |&v| Value::Bool(v))?,
        DatumType::String => values::<String>(tensor, |v| Value::String(v.clone()))?,
        // Integers tract computes symbolically (a classifier's labels after a `Cast`).
        DatumType::TDim => values::<i64>(cast(DatumType::I64)?.as_ref(), |&v| Value::from(v))?,
        datum if datum.is_float() => {
            values::<f64>(cast(DatumType::F64)?.as_ref(), |&v| Value::from(v))?
        }
        datum if datum.is_integer() => {
            values::<i64>(cast(DatumType::I64)?.as_ref(), |&v| Value::from(v))?
        }
        other => {
            return Err(ApiError::internal(format!(
                "output element type {other:?} is not served"
            )));
        }
    };
    let inner = &shape[1..];
    let per_row = inner.iter().product::<usize>().max(1);
    Ok(flat
        .chunks(per_row)
        .map(|chunk| nest(chunk, inner))
        .collect())
}

/// Rebuilds nested lists of `shape` from flat values; a scalar row stays a scalar.
fn nest(values: &[Value], shape: &[usize]) -> Value {
    match shape.split_first() {
        None => values.first().cloned().unwrap_or(Value::Null),
        Some((&dim, rest)) => {
            let step = rest.iter().product::<usize>().max(1);
            Value::Array(
                (0..dim)
                    .map(|index| nest(&values[index * step..(index + 1) * step], rest))
                    .collect(),
            )
        }
    }
}
