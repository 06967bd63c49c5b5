//! The `ai.onnx.ml` operators converters emit by default that tract-onnx does not load, added
//! to its ONNX loader ([`onnx`]): `TreeEnsembleRegressor` (every forest and gradient-boosting
//! regressor of skl2onnx and onnxmltools), `ZipMap` (every scikit-learn classifier converted
//! with default options), `Scaler` (`StandardScaler`, `MinMaxScaler`, …), `Imputer`
//! (`SimpleImputer`) and `Binarizer`. tract already has `TreeEnsembleClassifier`,
//! `LinearClassifier`, `LinearRegressor`, `Normalizer`, `CategoryMapper` and
//! `ArrayFeatureExtractor`.
//!
//! `ZipMap` turns a probability tensor into one `{label: probability}` map per row, a type
//! tract has no tensor for: it loads as the identity, and [`zip_maps`] names the outputs whose
//! rows the runtime answers as maps (as onnxruntime and MLflow's scoring server do).
//!
//! Each operator is checked against onnxruntime on models skl2onnx converts
//! (`inference-server/tests/serve_onnx_ml.rs`).

use std::collections::{BTreeMap, HashMap};

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{self, NodeProto};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::math::{add, mul, sub};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::logic::wire_with_rank_broadcast;
use tract_onnx_opl::ml::tree::{Aggregate, Cmp, TreeEnsemble, TreeEnsembleData};
use tract_onnx_opl::ml::tree_ensemble_classifier::TreeEnsembleClassifier as EnsembleScores;

/// tract's ONNX loader with the operators of this module.
pub fn onnx() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register
        .insert("TreeEnsembleRegressor", tree_regressor);
    onnx.op_register.insert("ZipMap", zip_map);
    onnx.op_register.insert("Scaler", scaler);
    onnx.op_register.insert("Imputer", imputer);
    onnx.op_register.insert("Binarizer", binarizer);
    onnx.op_register.insert("OneHotEncoder", one_hot_encoder);
    onnx.op_register.insert("LabelEncoder", label_encoder);
    onnx
}

/// The labels of a `ZipMap`'s maps.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// `classlabels_int64s`.
    Ints(Vec<i64>),
    /// `classlabels_strings`.
    Strings(Vec<String>),
}

impl Labels {
    /// The map key of column `index`.
    pub fn key(&self, index: usize) -> String {
        match self {
            Self::Ints(labels) => labels.get(index).map(i64::to_string),
            Self::Strings(labels) => labels.get(index).cloned(),
        }
        .unwrap_or_else(|| index.to_string())
    }
}

/// The outputs of `model` that a `ZipMap` makes, by name, with their labels.
pub fn zip_maps(model: &pb::ModelProto) -> HashMap<String, Labels> {
    let Some(graph) = model.graph.as_ref() else {
        return HashMap::new();
    };
    graph
        .node
        .iter()
        .filter(|node| node.op_type == "ZipMap")
        .filter_map(|node| {
            let output = node.output.first()?.clone();
            let labels = match node.get_attr_opt_vec::<i64>("classlabels_int64s").ok()? {
                Some(ints) => Labels::Ints(ints),
                None => Labels::Strings(
                    node.get_attr_opt_vec::<String>("classlabels_strings")
                        .ok()??,
                ),
            };
            Some((output, labels))
        })
        .collect()
}

// ---- TreeEnsembleRegressor ----------------------------------------------------------------

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct TreeRegressor {
    ensemble: TreeEnsemble,
    base_values: Option<Arc<Tensor>>,
}

fn tree_regressor(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    for unsupported in [
        "nodes_values_as_tensor",
        "target_weights_as_tensor",
        "base_values_as_tensor",
        "nodes_hitrates_as_tensor",
    ] {
        ensure!(
            node.get_attr_opt::<&str>(unsupported)
                .ok()
                .flatten()
                .is_none()
                && !node.attribute.iter().any(|a| a.name == unsupported),
            "TreeEnsembleRegressor: attribute {unsupported} (double precision) is not supported"
        );
    }
    let post: String = node
        .get_attr_opt("post_transform")?
        .unwrap_or_else(|| "NONE".into());
    ensure!(
        post == "NONE",
        "TreeEnsembleRegressor: post_transform {post} is not supported (only NONE)"
    );
    let aggregate = match node
        .get_attr_opt::<String>("aggregate_function")?
        .as_deref()
        .unwrap_or("SUM")
    {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Avg,
        other => bail!(
            "TreeEnsembleRegressor: aggregate_function {other} is not supported (SUM, AVERAGE)"
        ),
    };
    let n_targets: usize = node
        .get_attr_opt::<i64>("n_targets")?
        .unwrap_or(1)
        .try_into()?;
    let ensemble = ensemble(node, n_targets, aggregate)?;
    let base_values = node
        .get_attr_opt_vec::<f32>("base_values")?
        .map(|values| -> TractResult<Arc<Tensor>> {
            ensure!(
                values.len() == n_targets,
                "TreeEnsembleRegressor: base_values has {} values for {n_targets} targets",
                values.len()
            );
            Ok(tensor1(&values)
                .into_shape(&[1, n_targets])?
                .into_arc_tensor())
        })
        .transpose()?;
    Ok((
        expand(TreeRegressor {
            ensemble,
            base_values,
        }),
        vec![],
    ))
}

/// The trees of a regressor's attributes, in the table layout tract's evaluator walks: a row of
/// five `u32` per node (branch: feature, true row, false row, threshold bits, comparison with
/// `0x100` when NaN goes true; leaf: first and end index of its weights), each tree's root row,
/// and `(target, weight bits)` pairs.
fn ensemble(node: &NodeProto, n_targets: usize, aggregate: Aggregate) -> TractResult<TreeEnsemble> {
    let ints = |name: &str| -> TractResult<Vec<usize>> {
        node.get_attr_vec::<i64>(name)?
            .into_iter()
            .map(|v| usize::try_from(v).map_err(|_| format_err!("{name}: negative value {v}")))
            .collect()
    };
    let tree_ids = ints("nodes_treeids")?;
    let node_ids = ints("nodes_nodeids")?;
    let features = ints("nodes_featureids")?;
    let trues = ints("nodes_truenodeids")?;
    let falses = ints("nodes_falsenodeids")?;
    let values = node.get_attr_vec::<f32>("nodes_values")?;
    let modes = node.get_attr_vec::<String>("nodes_modes")?;
    let n = tree_ids.len();
    ensure!(n > 0, "TreeEnsembleRegressor: no nodes");
    for (name, len) in [
        ("nodes_nodeids", node_ids.len()),
        ("nodes_featureids", features.len()),
        ("nodes_truenodeids", trues.len()),
        ("nodes_falsenodeids", falses.len()),
        ("nodes_values", values.len()),
        ("nodes_modes", modes.len()),
    ] {
        ensure!(
            len == n,
            "TreeEnsembleRegressor: {name} has {len} values for {n} nodes"
        );
    }
    let nan_true = node
        .get_attr_opt_vec::<i64>("nodes_missing_value_tracks_true")?
        .unwrap_or_else(|| vec![0; n]);
    let leaf_trees = ints("target_treeids")?;
    let leaf_nodes = ints("target_nodeids")?;
    let leaf_targets = ints("target_ids")?;
    let leaf_weights = node.get_attr_vec::<f32>("target_weights")?;
    ensure!(
        leaf_nodes.len() == leaf_trees.len()
            && leaf_targets.len() == leaf_trees.len()
            && leaf_weights.len() == leaf_trees.len(),
        "TreeEnsembleRegressor: target_* attributes differ in length"
    );
    ensure!(
        leaf_targets.iter().all(|&t| t < n_targets),
        "TreeEnsembleRegressor: a target id is not below n_targets ({n_targets})"
    );
    // Rows ordered by tree then node id; each (tree, node) found by its row.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (tree_ids[i], node_ids[i]));
    let row_of: HashMap<(usize, usize), u32> = order
        .iter()
        .enumerate()
        .map(|(row, &i)| Ok(((tree_ids[i], node_ids[i]), u32::try_from(row)?)))
        .collect::<TractResult<_>>()?;
    let mut weights: BTreeMap<(usize, usize), Vec<(u32, u32)>> = BTreeMap::new();
    for i in 0..leaf_trees.len() {
        weights
            .entry((leaf_trees[i], leaf_nodes[i]))
            .or_default()
            .push((u32::try_from(leaf_targets[i])?, leaf_weights[i].to_bits()));
    }
    let (mut trees, mut rows, mut leaves) =
        (Vec::<u32>::new(), Vec::<u32>::new(), Vec::<u32>::new());
    let mut current = None;
    for (row, &i) in order.iter().enumerate() {
        let tree = tree_ids[i];
        if current != Some(tree) {
            current = Some(tree);
            trees.push(u32::try_from(row)?);
        }
        let child = |id: usize| {
            row_of.get(&(tree, id)).copied().ok_or_else(|| {
                format_err!(
                    "TreeEnsembleRegressor: tree {tree} node {} names missing node {id}",
                    node_ids[i]
                )
            })
        };
        let (cmp, swap) = match modes[i].as_str() {
            "LEAF" => {
                let start = u32::try_from(leaves.len() / 2)?;
                for (target, weight) in weights.get(&(tree, node_ids[i])).into_iter().flatten() {
                    leaves.extend([*target, *weight]);
                }
                rows.extend([start, u32::try_from(leaves.len() / 2)?, 0, 0, 0]);
                continue;
            }
            "BRANCH_LEQ" => (Cmp::LessEqual, false),
            "BRANCH_LT" => (Cmp::Less, false),
            // `x >= v` is "not x < v", `x > v` is "not x <= v": the same rows with the
            // children swapped (and NaN's way kept).
            "BRANCH_GTE" => (Cmp::Less, true),
            "BRANCH_GT" => (Cmp::LessEqual, true),
            "BRANCH_EQ" => (Cmp::Equal, false),
            "BRANCH_NEQ" => (Cmp::NotEqual, false),
            other => bail!("TreeEnsembleRegressor: node mode {other} is not supported"),
        };
        let (yes, no) = (child(trues[i])?, child(falses[i])?);
        let (yes, no) = if swap { (no, yes) } else { (yes, no) };
        let nan_goes_true = nan_true.get(i).copied().unwrap_or(0) != 0;
        let nan_flag = if nan_goes_true != swap { 0x100 } else { 0 };
        rows.extend([
            u32::try_from(features[i])?,
            yes,
            no,
            values[i].to_bits(),
            u32::from(cmp.to_u8()) | nan_flag,
        ]);
    }
    let data = TreeEnsembleData {
        trees: rctensor1(&trees),
        nodes: tensor1(&rows)
            .into_shape(&[rows.len() / 5, 5])?
            .into_arc_tensor(),
        leaves: tensor1(&leaves)
            .into_shape(&[leaves.len() / 2, 2])?
            .into_arc_tensor(),
    };
    let max_feature = features.iter().copied().max().unwrap_or(0);
    TreeEnsemble::build(data, max_feature, n_targets, aggregate)
}

impl Expansion for TreeRegressor {
    fn name(&self) -> StaticName {
        "TreeEnsembleRegressor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.ensemble.n_classes().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = as_f32(prefix, model, inputs[0])?;
        let scores = model.wire_node(
            format!("{prefix}.trees"),
            EnsembleScores {
                ensemble: self.ensemble.clone(),
            },
            &[x],
        )?;
        match &self.base_values {
            None => Ok(scores),
            Some(base) => {
                let base = model.add_const(format!("{prefix}.base_values"), base.clone())?;
                wire_with_rank_broadcast(
                    format!("{prefix}.add_base"),
                    model,
                    add(),
                    &[scores[0], base],
                )
            }
        }
    }
}

fn as_f32(prefix: &str, model: &mut TypedModel, x: OutletId) -> TractResult<OutletId> {
    if model.outlet_fact(x)?.datum_type == f32::datum_type() {
        return Ok(x);
    }
    Ok(model.wire_node(
        format!("{prefix}.to_f32"),
        tract_onnx::tract_core::ops::cast::cast(f32::datum_type()),
        &[x],
    )?[0])
}

// ---- ZipMap -------------------------------------------------------------------------------

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct ZipMap;

fn zip_map(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(ZipMap), vec![]))
}

impl Expansion for ZipMap {
    fn name(&self) -> StaticName {
        "ZipMap".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        // The probabilities themselves; the runtime answers each row as a map.
        model.wire_node(
            format!("{prefix}.probabilities"),
            tract_onnx::tract_core::ops::identity::Identity,
            inputs,
        )
    }
}

// ---- Scaler -------------------------------------------------------------------------------

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct Scaler {
    offset: Arc<Tensor>,
    scale: Arc<Tensor>,
}

/// Per-feature values of `name` as a `[1, n]` tensor (`[1]` for one value), or `default`.
fn per_feature(node: &NodeProto, name: &str, default: f32) -> TractResult<Arc<Tensor>> {
    let values = node
        .get_attr_opt_vec::<f32>(name)?
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| vec![default]);
    let len = values.len();
    Ok(tensor1(&values).into_shape(&[1, len])?.into_arc_tensor())
}

fn scaler(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((
        expand(Scaler {
            offset: per_feature(node, "offset", 0.0)?,
            scale: per_feature(node, "scale", 1.0)?,
        }),
        vec![],
    ))
}

impl Expansion for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x = as_f32(prefix, model, inputs[0])?;
        let offset = model.add_const(format!("{prefix}.offset"), self.offset.clone())?;
        let scale = model.add_const(format!("{prefix}.scale"), self.scale.clone())?;
        let centred =
            wire_with_rank_broadcast(format!("{prefix}.sub"), model, sub(), &[x, offset])?;
        wire_with_rank_broadcast(format!("{prefix}.mul"), model, mul(), &[centred[0], scale])
    }
}

// ---- Imputer and Binarizer: element-wise -----------------------------------------------------

/// What an element-wise op does to each `f32`.
#[derive(Debug, Clone, PartialEq)]
enum Elementwise {
    /// `Imputer`: a value equal to `replaced` (NaN matching NaN) becomes its feature's
    /// `imputed` value (one value for all features, or one per feature).
    Impute { replaced: f32, imputed: Vec<f32> },
    /// `Binarizer`: 1 above `threshold`, else 0.
    Binarize { threshold: f32 },
}

impl std::hash::Hash for Elementwise {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Self::Impute { replaced, imputed } => {
                0u8.hash(state);
                replaced.to_bits().hash(state);
                imputed.iter().for_each(|v| v.to_bits().hash(state));
            }
            Self::Binarize { threshold } => {
                1u8.hash(state);
                threshold.to_bits().hash(state);
            }
        }
    }
}

impl Eq for Elementwise {}

impl Elementwise {
    fn name(&self) -> &'static str {
        match self {
            Self::Impute { .. } => "Imputer",
            Self::Binarize { .. } => "Binarizer",
        }
    }

    /// Applies the op to `values`, whose last axis has `features` entries.
    fn apply(&self, values: &mut [f32], features: usize) {
        match self {
            Self::Impute { replaced, imputed } => {
                for (i, value) in values.iter_mut().enumerate() {
                    let hit = if replaced.is_nan() {
                        value.is_nan()
                    } else {
                        *value == *replaced
                    };
                    if hit {
                        *value = if imputed.len() == 1 {
                            imputed[0]
                        } else {
                            imputed[i % features.max(1)]
                        };
                    }
                }
            }
            Self::Binarize { threshold } => {
                for value in values.iter_mut() {
                    *value = if *value > *threshold { 1.0 } else { 0.0 };
                }
            }
        }
    }
}

fn imputer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    ensure!(
        node.get_attr_opt_vec::<i64>("imputed_value_int64s")?
            .is_none_or(|v| v.is_empty()),
        "Imputer: integer imputation (imputed_value_int64s) is not supported"
    );
    let imputed = node
        .get_attr_opt_vec::<f32>("imputed_value_floats")?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format_err!("Imputer: imputed_value_floats is missing"))?;
    let replaced = node
        .get_attr_opt::<f32>("replaced_value_float")?
        .unwrap_or(f32::NAN);
    Ok((
        expand(KernelExpansion(Kernel::Elementwise(Elementwise::Impute {
            replaced,
            imputed,
        }))),
        vec![],
    ))
}

fn binarizer(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let threshold = node.get_attr_opt::<f32>("threshold")?.unwrap_or(0.0);
    Ok((
        expand(KernelExpansion(Kernel::Elementwise(
            Elementwise::Binarize { threshold },
        ))),
        vec![],
    ))
}

// ---- OneHotEncoder and LabelEncoder: categories ---------------------------------------------

/// A category value, compared as ONNX-ML does: numbers as integers, or text.
#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord)]
enum Category {
    Int(i64),
    Text(String),
}

/// The categories of `tensor`, element by element (numbers truncated to integers).
fn categories(tensor: &Tensor) -> TractResult<Vec<Category>> {
    if tensor.datum_type() == DatumType::String {
        let view = tensor.to_plain_array_view::<String>()?;
        return Ok(view.iter().map(|s| Category::Text(s.clone())).collect());
    }
    let ints = tensor.cast_to::<i64>()?;
    let view = ints.to_plain_array_view::<i64>()?;
    Ok(view.iter().map(|&v| Category::Int(v)).collect())
}

/// The `<prefix>_int64s` or `<prefix>_strings` attribute as categories.
fn category_attr(node: &NodeProto, prefix: &str) -> TractResult<Option<Vec<Category>>> {
    if let Some(ints) = node.get_attr_opt_vec::<i64>(&format!("{prefix}_int64s"))? {
        return Ok(Some(ints.into_iter().map(Category::Int).collect()));
    }
    Ok(node
        .get_attr_opt_vec::<String>(&format!("{prefix}_strings"))?
        .map(|texts| texts.into_iter().map(Category::Text).collect()))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct OneHot {
    categories: Vec<Category>,
    /// `zeros = 1`: an unknown category is all zeros; else it is an error.
    zeros: bool,
}

fn one_hot_encoder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let categories = category_attr(node, "cats")?
        .filter(|c| !c.is_empty())
        .ok_or_else(|| format_err!("OneHotEncoder: neither cats_int64s nor cats_strings"))?;
    let zeros = node.get_attr_opt::<i64>("zeros")?.unwrap_or(1) != 0;
    Ok((
        expand(KernelExpansion(Kernel::Category(CategoryOp::OneHot(
            OneHot { categories, zeros },
        )))),
        vec![],
    ))
}

/// What `LabelEncoder` maps to.
#[derive(Debug, Clone, PartialEq)]
enum Mapped {
    Ints(Vec<i64>, i64),
    Floats(Vec<f32>, f32),
    Texts(Vec<String>, String),
}

impl std::hash::Hash for Mapped {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            Self::Ints(values, default) => (0u8, values, default).hash(state),
            Self::Floats(values, default) => {
                1u8.hash(state);
                values.iter().for_each(|v| v.to_bits().hash(state));
                default.to_bits().hash(state);
            }
            Self::Texts(values, default) => (2u8, values, default).hash(state),
        }
    }
}

impl Eq for Mapped {}

impl Mapped {
    fn datum(&self) -> DatumType {
        match self {
            Self::Ints(..) => DatumType::I64,
            Self::Floats(..) => DatumType::F32,
            Self::Texts(..) => DatumType::String,
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Ints(v, _) => v.len(),
            Self::Floats(v, _) => v.len(),
            Self::Texts(v, _) => v.len(),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct LabelMap {
    keys: Vec<Category>,
    values: Mapped,
}

fn label_encoder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    ensure!(
        node.get_attr_opt_vec::<f32>("keys_floats")?.is_none(),
        "LabelEncoder: keys_floats is not supported (int64 and string keys are)"
    );
    let keys = category_attr(node, "keys")?
        .ok_or_else(|| format_err!("LabelEncoder: neither keys_int64s nor keys_strings"))?;
    let values = if let Some(ints) = node.get_attr_opt_vec::<i64>("values_int64s")? {
        Mapped::Ints(
            ints,
            node.get_attr_opt::<i64>("default_int64")?.unwrap_or(-1),
        )
    } else if let Some(floats) = node.get_attr_opt_vec::<f32>("values_floats")? {
        Mapped::Floats(
            floats,
            node.get_attr_opt::<f32>("default_float")?.unwrap_or(-0.0),
        )
    } else if let Some(texts) = node.get_attr_opt_vec::<String>("values_strings")? {
        let default = node
            .get_attr_opt::<String>("default_string")?
            .unwrap_or_else(|| "_Unused".into());
        Mapped::Texts(texts, default)
    } else {
        bail!("LabelEncoder: no values_int64s, values_floats or values_strings");
    };
    ensure!(
        values.len() == keys.len(),
        "LabelEncoder: {} keys for {} values",
        keys.len(),
        values.len()
    );
    Ok((
        expand(KernelExpansion(Kernel::Category(CategoryOp::Label(
            LabelMap { keys, values },
        )))),
        vec![],
    ))
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
enum CategoryOp {
    OneHot(OneHot),
    Label(LabelMap),
}

impl CategoryOp {
    fn name(&self) -> &'static str {
        match self {
            Self::OneHot(_) => "OneHotEncoder",
            Self::Label(_) => "LabelEncoder",
        }
    }

    fn datum(&self) -> DatumType {
        match self {
            Self::OneHot(_) => DatumType::F32,
            Self::Label(map) => map.values.datum(),
        }
    }

    fn eval(&self, input: &Tensor) -> TractResult<Tensor> {
        let found = categories(input)?;
        let shape = input.shape();
        match self {
            Self::OneHot(one_hot) => {
                let n = one_hot.categories.len();
                let index: HashMap<&Category, usize> = one_hot
                    .categories
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c, i))
                    .collect();
                let mut out = vec![0f32; found.len() * n];
                for (i, category) in found.iter().enumerate() {
                    match index.get(category) {
                        Some(&k) => out[i * n + k] = 1.0,
                        None if one_hot.zeros => {}
                        None => bail!("OneHotEncoder: unknown category {category:?} (zeros = 0)"),
                    }
                }
                let mut out_shape = shape.to_vec();
                out_shape.push(n);
                Ok(tensor1(&out).into_shape(&out_shape)?)
            }
            Self::Label(map) => {
                let index: HashMap<&Category, usize> =
                    map.keys.iter().enumerate().map(|(i, c)| (c, i)).collect();
                let at = |c: &Category| index.get(c).copied();
                Ok(match &map.values {
                    Mapped::Ints(values, default) => {
                        let out: Vec<i64> = found
                            .iter()
                            .map(|c| at(c).map_or(*default, |i| values[i]))
                            .collect();
                        tensor1(&out).into_shape(shape)?
                    }
                    Mapped::Floats(values, default) => {
                        let out: Vec<f32> = found
                            .iter()
                            .map(|c| at(c).map_or(*default, |i| values[i]))
                            .collect();
                        tensor1(&out).into_shape(shape)?
                    }
                    Mapped::Texts(values, default) => {
                        let out: Vec<String> = found
                            .iter()
                            .map(|c| at(c).map_or_else(|| default.clone(), |i| values[i].clone()))
                            .collect();
                        tensor1(&out).into_shape(shape)?
                    }
                })
            }
        }
    }
}

// ---- The element-wise and category operators as one tract op -------------------------------

/// An operator computed element by element, in Rust.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
enum Kernel {
    Elementwise(Elementwise),
    Category(CategoryOp),
}

impl Kernel {
    fn name(&self) -> &'static str {
        match self {
            Self::Elementwise(op) => op.name(),
            Self::Category(op) => op.name(),
        }
    }

    fn datum(&self) -> DatumType {
        match self {
            Self::Elementwise(_) => DatumType::F32,
            Self::Category(op) => op.datum(),
        }
    }

    /// The axis the output adds after the input's (one-hot columns), if any.
    fn added_axis(&self) -> Option<usize> {
        match self {
            Self::Category(CategoryOp::OneHot(one_hot)) => Some(one_hot.categories.len()),
            _ => None,
        }
    }

    fn eval(&self, input: &Tensor) -> TractResult<Tensor> {
        match self {
            Self::Elementwise(op) => {
                let mut tensor = input.cast_to::<f32>()?.into_owned();
                let features = tensor.shape().last().copied().unwrap_or(1);
                let mut view = tensor.to_plain_array_view_mut::<f32>()?;
                let values = view
                    .as_slice_mut()
                    .ok_or_else(|| format_err!("{}: the input is not contiguous", op.name()))?;
                op.apply(values, features);
                Ok(tensor)
            }
            Self::Category(op) => op.eval(input),
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct KernelExpansion(Kernel);

impl Expansion for KernelExpansion {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, self.0.datum())?;
        match self.0.added_axis() {
            None => s.equals(&outputs[0].shape, &inputs[0].shape)?,
            Some(n) => {
                s.equals(&outputs[0].rank, inputs[0].rank.bex() + 1)?;
                s.given(&inputs[0].rank, move |s, rank| {
                    let rank = rank as usize;
                    for axis in 0..rank {
                        s.equals(&outputs[0].shape[axis], &inputs[0].shape[axis])?;
                    }
                    s.equals(&outputs[0].shape[rank], n.to_dim())
                })?;
            }
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, KernelOp(self.0.clone()), inputs)
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq)]
struct KernelOp(Kernel);

impl Op for KernelOp {
    fn name(&self) -> StaticName {
        self.0.name().into()
    }

    op_as_typed_op!();
}

impl EvalOp for KernelOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        Ok(tvec!(self.0.eval(&input)?.into_tvalue()))
    }
}

impl TypedOp for KernelOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        if let Some(n) = self.0.added_axis() {
            shape.push(n.to_dim());
        }
        Ok(tvec!(self.0.datum().fact(&*shape)))
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_ops_follow_the_onnx_ml_definitions() {
        let mut values = [1.0, f32::NAN, f32::NAN, 4.0];
        Elementwise::Impute {
            replaced: f32::NAN,
            imputed: vec![10.0, 20.0],
        }
        .apply(&mut values, 2);
        assert_eq!(values, [1.0, 20.0, 10.0, 4.0]);
        let mut values = [0.5, 1.5, -2.0];
        Elementwise::Binarize { threshold: 1.0 }.apply(&mut values, 3);
        assert_eq!(values, [0.0, 1.0, 0.0]);
        assert_eq!(Labels::Ints(vec![3, 7]).key(1), "7");
        let one_hot = CategoryOp::OneHot(OneHot {
            categories: vec![Category::Int(2), Category::Int(5)],
            zeros: true,
        });
        let out = one_hot
            .eval(&tensor1(&[5.0f32, 9.0, 2.0]))
            .expect("one-hot");
        assert_eq!(out.shape(), &[3, 2]);
        assert_eq!(
            out.to_plain_array_view::<f32>()
                .expect("f32")
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [0.0, 1.0, 0.0, 0.0, 1.0, 0.0]
        );
        let label = CategoryOp::Label(LabelMap {
            keys: vec![Category::Text("a".into()), Category::Text("b".into())],
            values: Mapped::Ints(vec![10, 20], -1),
        });
        let out = label
            .eval(&tensor1(&["b".to_string(), "z".to_string()]))
            .expect("label");
        assert_eq!(
            out.to_plain_array_view::<i64>()
                .expect("i64")
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            [20, -1]
        );
        assert_eq!(Labels::Strings(vec!["a".into()]).key(0), "a");
    }
}
