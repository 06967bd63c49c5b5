"""Converts real scikit-learn models with skl2onnx's default options, as users export them,
and records onnxruntime's outputs on fixed inputs: the oracle of tests/serve_onnx_ml.rs.

    convert.py OUT_DIR

Writes OUT_DIR/<case>/model.onnx for each case and OUT_DIR/cases.json: per case the inputs
(float32 rows) and onnxruntime's outputs by name (ZipMap outputs as lists of {label: p}).
"""

import json
import pathlib
import sys

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import (
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Binarizer, MinMaxScaler, StandardScaler

out = pathlib.Path(sys.argv[1])
iris_x, iris_y = load_iris(return_X_y=True)
iris_x = iris_x.astype(np.float32)
diab_x, diab_y = load_diabetes(return_X_y=True)
diab_x = diab_x.astype(np.float32)
rng = np.random.default_rng(7)

# Iris with holes, for the imputer.
holed = iris_x.copy()
holed[rng.random(holed.shape) < 0.1] = np.nan

cases = {
    "forest_regressor": (RandomForestRegressor(n_estimators=12, max_depth=6, random_state=0), diab_x, diab_y),
    "boosting_regressor": (GradientBoostingRegressor(n_estimators=25, max_depth=3, random_state=0), diab_x, diab_y),
    "forest_classifier": (RandomForestClassifier(n_estimators=10, max_depth=5, random_state=0), iris_x, iris_y),
    "imputed_scaled_logistic": (
        make_pipeline(SimpleImputer(strategy="mean"), StandardScaler(), LogisticRegression(max_iter=500)),
        holed,
        iris_y,
    ),
    "minmax_binarized_linear": (
        make_pipeline(MinMaxScaler(), Binarizer(threshold=0.5), LinearRegression()),
        diab_x,
        diab_y,
    ),
}

report = {}
for name, (model, x, y) in cases.items():
    model.fit(x, y)
    onx = to_onnx(model, x[:1])
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    rows = x[rng.choice(len(x), 16, replace=False)]
    session = ort.InferenceSession(str(folder / "model.onnx"))
    input_name = session.get_inputs()[0].name
    results = session.run(None, {input_name: rows})
    outputs = {}
    for meta, value in zip(session.get_outputs(), results):
        if isinstance(value, list):  # ZipMap: a list of {label: p}
            outputs[meta.name] = [{str(k): float(v) for k, v in row.items()} for row in value]
        else:
            outputs[meta.name] = np.asarray(value).tolist()
    ops = sorted({n.op_type for n in onx.graph.node})
    report[name] = {
        "inputs": [[None if np.isnan(v) else float(v) for v in row] for row in rows],
        "outputs": outputs,
        "ops": ops,
    }
(out / "cases.json").write_text(json.dumps(report))
print(json.dumps({k: v["ops"] for k, v in report.items()}))
