//! SQL text for the monitor's queries, and reading their answers. Every aggregate runs in
//! DataFusion; this module only writes the statements and picks values out of result batches.

use datafusion::arrow::array::{Array, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use sluice_crds::FieldKind;

use crate::MonitorError;
use crate::stage::{FIRST, next_column, window_column};

/// A profiled column of the staged rows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Its name in the staged rows and in the output tables.
    pub name: String,
    /// Numeric or categorical.
    pub kind: FieldKind,
    /// Counted once per request (operational columns) rather than once per instance.
    pub per_request: bool,
    /// How the staged value is read (`"status_code"`, or a cast of it).
    pub expression: String,
}

/// A string literal.
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// A quoted identifier.
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Which rows and windows a query covers.
#[derive(Clone, Debug)]
pub struct Scope {
    /// The staged relation.
    pub relation: &'static str,
    /// The window start expression (`__w0`, or a constant for a baseline).
    pub window: String,
    /// The window end expression.
    pub window_end: String,
    /// Window starts to keep, `[from, to)` (all when `None`).
    pub windows: Option<(i64, i64)>,
    /// The slice: its key expression and the values kept.
    pub slice: Option<(String, Vec<String>)>,
}

impl Scope {
    /// The windows of the granularity at index `i` of the monitored rows.
    pub fn windows_of(
        relation: &'static str,
        i: usize,
        windows: (i64, i64),
        slice: Option<(String, Vec<String>)>,
    ) -> Self {
        Self {
            relation,
            window: window_column(i),
            window_end: next_column(i),
            windows: Some(windows),
            slice,
        }
    }

    /// All rows of a relation as one window (a baseline).
    pub fn whole(relation: &'static str, slice: Option<(String, Vec<String>)>) -> Self {
        Self {
            relation,
            window: "CAST(0 AS BIGINT)".into(),
            window_end: "CAST(0 AS BIGINT)".into(),
            windows: None,
            slice,
        }
    }

    /// The slice value expression (a NULL string without a slice).
    pub fn slice_value(&self) -> String {
        match &self.slice {
            Some((expression, _)) => format!("CAST(({expression}) AS VARCHAR)"),
            None => "CAST(NULL AS VARCHAR)".into(),
        }
    }

    /// The WHERE clause of the scope.
    pub fn filter(&self) -> String {
        let mut parts = vec!["TRUE".to_string()];
        if let Some((from, to)) = self.windows {
            parts.push(format!("{w} >= {from} AND {w} < {to}", w = self.window));
        }
        if let Some((_, values)) = &self.slice {
            parts.push(in_list(
                &self.slice_value(),
                values.iter().map(|value| literal(value)),
            ));
        }
        parts.join(" AND ")
    }
}

/// `expression IN (items)`, FALSE for no items.
pub fn in_list(expression: &str, items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    if items.is_empty() {
        "FALSE".into()
    } else {
        format!("{expression} IN ({})", items.join(", "))
    }
}

/// The predicate a column's values pass to be counted (per request: only first instances).
pub fn present(column: &Column) -> String {
    let mut predicate = format!("{} IS NOT NULL", column.expression);
    if column.kind == FieldKind::Numeric {
        predicate.push_str(&format!(" AND NOT isnan({})", column.expression));
    }
    if column.per_request {
        predicate.push_str(&format!(" AND {FIRST}"));
    }
    predicate
}

/// A result batch's column, cast to one Arrow type and read by row (null where null).
pub struct Values<A>(A);

impl<A: Array + Clone + 'static> Values<A> {
    fn cast(batch: &RecordBatch, name: &str, kind: &DataType) -> Result<Self, MonitorError> {
        let array = batch.column_by_name(name).ok_or_else(|| {
            MonitorError::Schema(format!("a query answered without column {name}"))
        })?;
        let array = cast(array, kind)?;
        let typed = array.as_any().downcast_ref::<A>().cloned().ok_or_else(|| {
            MonitorError::Schema(format!("column {name} is not {kind} after a cast"))
        })?;
        Ok(Self(typed))
    }

    fn valid(&self, row: usize) -> bool {
        row < self.0.len() && self.0.is_valid(row)
    }
}

/// A column read as `f64` values.
pub type Numbers = Values<Float64Array>;
/// A column read as `i64` values.
pub type Integers = Values<Int64Array>;
/// A column read as strings.
pub type Texts = Values<StringArray>;

impl Numbers {
    /// Column `name` of `batch`, cast to `f64`.
    pub fn of(batch: &RecordBatch, name: &str) -> Result<Self, MonitorError> {
        Self::cast(batch, name, &DataType::Float64)
    }

    /// The value at `row`.
    pub fn get(&self, row: usize) -> Option<f64> {
        self.valid(row).then(|| self.0.value(row))
    }
}

impl Integers {
    /// Column `name` of `batch`, cast to `i64`.
    pub fn of(batch: &RecordBatch, name: &str) -> Result<Self, MonitorError> {
        Self::cast(batch, name, &DataType::Int64)
    }

    /// The value at `row`.
    pub fn get(&self, row: usize) -> Option<i64> {
        self.valid(row).then(|| self.0.value(row))
    }
}

impl Texts {
    /// Column `name` of `batch`, cast to strings.
    pub fn of(batch: &RecordBatch, name: &str) -> Result<Self, MonitorError> {
        Self::cast(batch, name, &DataType::Utf8)
    }

    /// The value at `row`.
    pub fn get(&self, row: usize) -> Option<String> {
        self.valid(row).then(|| self.0.value(row).to_string())
    }
}

/// The `(cw, sv, col)` key columns of a drift query's answer.
pub struct Keys(Integers, Texts, Texts);

impl Keys {
    /// The key columns of `batch`.
    pub fn of(batch: &RecordBatch) -> Result<Self, MonitorError> {
        Ok(Self(
            Integers::of(batch, "cw")?,
            Texts::of(batch, "sv")?,
            Texts::of(batch, "col")?,
        ))
    }

    /// The key at `row`: window start, slice value, column.
    pub fn get(&self, row: usize) -> (i64, Option<String>, String) {
        (
            self.0.get(row).unwrap_or_default(),
            self.1.get(row),
            self.2.get(row).unwrap_or_default(),
        )
    }
}

/// Runs `query` and collects its answer; a failure names the statement.
pub async fn collect(ctx: &SessionContext, query: &str) -> Result<Vec<RecordBatch>, MonitorError> {
    let run = async { ctx.sql(query).await?.collect().await };
    run.await.map_err(|source| MonitorError::Statement {
        statement: query.split_whitespace().collect::<Vec<_>>().join(" "),
        source,
    })
}
