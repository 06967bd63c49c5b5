"""Converts real scikit-learn, XGBoost and LightGBM models with the converters' default options
(skl2onnx, onnxmltools), as users export them, and records onnxruntime's outputs on fixed
inputs: the oracle of tests/serve_onnx_ml.rs.

    convert.py OUT_DIR

Writes OUT_DIR/<case>/model.onnx for each case and OUT_DIR/cases.json: per case the inputs
(float32 rows) and onnxruntime's outputs by name (ZipMap outputs as lists of {label: p}).
"""

import json
import pathlib
import sys

import lightgbm
import numpy as np
import onnxmltools
import onnxruntime as ort
import xgboost
from onnxmltools.convert.common.data_types import FloatTensorType
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
from sklearn.preprocessing import (
    Binarizer,
    LabelEncoder,
    MinMaxScaler,
    OneHotEncoder,
    StandardScaler,
)

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

# Small whole numbers, for the one-hot encoder.
binned = np.floor(iris_x).astype(np.int64)
species = np.array(["setosa", "versicolor", "virginica"])[iris_y]
cases["one_hot_logistic"] = (
    make_pipeline(OneHotEncoder(handle_unknown="ignore"), LogisticRegression(max_iter=500)),
    binned,
    iris_y,
)
cases["label_encoder"] = (LabelEncoder(), species, None)
boosters = {
    "xgboost_regressor": (xgboost.XGBRegressor(n_estimators=20, max_depth=3), diab_x, diab_y),
    "xgboost_classifier": (xgboost.XGBClassifier(n_estimators=20, max_depth=3), iris_x, iris_y),
    "lightgbm_regressor": (lightgbm.LGBMRegressor(n_estimators=20, verbose=-1), diab_x, diab_y),
    "lightgbm_classifier": (lightgbm.LGBMClassifier(n_estimators=20, verbose=-1), iris_x, iris_y),
}


def convert(name, model, x):
    if name.startswith("xgboost"):
        return onnxmltools.convert_xgboost(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))])
    if name.startswith("lightgbm"):
        return onnxmltools.convert_lightgbm(model, initial_types=[("input", FloatTensorType([None, x.shape[1]]))])
    if name == "label_encoder":
        return to_onnx(model, x[:1].reshape(-1, 1))
    return to_onnx(model, x[:1])


cases.update(boosters)
report = {}
for name, (model, x, y) in cases.items():
    if y is None:
        model.fit(x)
    else:
        model.fit(x, y)
    onx = convert(name, model, x)
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.onnx").write_bytes(onx.SerializeToString())
    rows = x[rng.choice(len(x), 16, replace=False)]
    if name == "label_encoder":
        rows = rows.reshape(-1, 1)
    session = ort.InferenceSession(str(folder / "model.onnx"))
    input_name = session.get_inputs()[0].name
    results = session.run(None, {input_name: rows})
    outputs = {}
    for meta, value in zip(session.get_outputs(), results):
        if isinstance(value, list):  # ZipMap: a list of {label: p}
            outputs[meta.name] = [{str(k): float(v) for k, v in row.items()} for row in value]
        else:
            outputs[meta.name] = np.asarray(value).tolist()
    if name in ("forest_regressor", "forest_classifier"):
        # The same model as MLflow saves it (an `MLmodel` directory with the onnx flavor).
        import mlflow.onnx

        mlflow.onnx.save_model(onx, str(folder / "mlflow"))
    ops = sorted({n.op_type for n in onx.graph.node})
    report[name] = {
        "inputs": [
            [None if isinstance(v, float) and np.isnan(v) else v for v in row]
            for row in rows.tolist()
        ],
        "outputs": outputs,
        "ops": ops,
    }
(out / "cases.json").write_text(json.dumps(report))
print(json.dumps({k: v["ops"] for k, v in report.items()}))
