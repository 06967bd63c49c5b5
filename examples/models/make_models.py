"""Makes the example artifacts the manifests in examples/ point at (small, trained on synthetic
data with fixed seeds, so the files are reproducible):

    fraud-detector/3, fraud-detector/4  MLflow models (MLmodel, onnx flavor), classifiers
    churn/7, churn/8                    ONNX classifiers with a sluice-model.yaml
    ranker/12, ranker/13                ONNX regressors (a relevance score) with a sluice-model.yaml

    python3 -m venv /tmp/onnx-venv
    /tmp/onnx-venv/bin/pip install scikit-learn skl2onnx onnx onnxruntime
    /tmp/onnx-venv/bin/python examples/models/make_models.py

Each graph has one input `input` (float32, [N, features]). The churn classifiers answer
`label` (int64) and `probabilities` (float32, [N, 2]), ZipMap off. The fraud classifiers are
converted as MLflow users convert them, with the converter's defaults: `output_label` and
`output_probability` through a ZipMap ({label: probability} per row), which is also what lets
MLflow's scoring server answer a DataFrame for them (a probability matrix beside the label does
not flatten to one value per row; see inference-server/serve/src/runtime/mlflow_answer.rs). The tests put
these folders where the manifests point (an S3 or GCS bucket, a claim); see
tests/tests/examples_answer.rs.
"""

import json
import pathlib

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LinearRegression, LogisticRegression

HERE = pathlib.Path(__file__).parent

FRAUD = ["amount", "hour", "merchant_risk", "card_present"]
CHURN = ["tenure_months", "monthly_charges", "support_calls", "contract_months"]
RANKER = ["relevance", "freshness_days", "clicks", "price"]


def synthetic(seed, columns, weights, classify):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2000, len(columns))).astype(np.float32)
    score = x @ np.array(weights, np.float32) + rng.normal(scale=0.3, size=2000)
    return x, (score > 0).astype(np.int64) if classify else score.astype(np.float32)


def export(model, features, zipmap=False):
    options = {id(model): {"zipmap": zipmap}} if hasattr(model, "predict_proba") else None
    return to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, features]))],
        options=options,
        target_opset=17,
    ).SerializeToString()


def write(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    print("wrote", folder)


def sluice_manifest(title, graph, columns, task="predict"):
    inputs = "\n".join(f"    - {{name: {c}, type: double}}" for c in columns)
    return (
        f"# {title} (made by examples/models/make_models.py). See docs/model-directory.md.\n"
        f"format: onnx\ntask: {task}\nfiles: {{model: {graph}}}\nsignature:\n  inputs:\n{inputs}\n"
    )


def mlmodel(columns):
    inputs = json.dumps([{"type": "double", "name": c, "required": True} for c in columns])
    outputs = json.dumps([{"type": "long", "name": "output_label", "required": True}])
    return (
        "artifact_path: model\n"
        "flavors:\n"
        "  onnx:\n    code: null\n    data: model.onnx\n    onnx_version: 1.17.0\n"
        "    providers: [CPUExecutionProvider]\n"
        "  python_function:\n    data: model.onnx\n    env: {virtualenv: python_env.yaml}\n"
        "    loader_module: mlflow.onnx\n    python_version: 3.11.0\n"
        "mlflow_version: 2.17.2\n"
        "model_uuid: 0f3c8a{}\n"
        "signature:\n"
        f"  inputs: '{inputs}'\n"
        f"  outputs: '{outputs}'\n"
        "  params: null\n"
    )


for version, weights in [(3, [1.2, -0.4, 0.9, -0.8]), (4, [1.4, -0.2, 1.1, -0.9])]:
    x, y = synthetic(version, FRAUD, weights, classify=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    write(
        HERE / "fraud-detector" / str(version),
        {"MLmodel": mlmodel(FRAUD).replace("{}", f"{version:026d}"), "model.onnx": export(model, 4, zipmap=True)},
    )

for version, weights in [(7, [-1.0, 0.6, 0.8, -0.7]), (8, [-1.1, 0.7, 0.9, -0.5])]:
    x, y = synthetic(version, CHURN, weights, classify=True)
    model = LogisticRegression(max_iter=500).fit(x, y)
    write(
        HERE / "churn" / str(version),
        {
            "churn.onnx": export(model, 4),
            "sluice-model.yaml": sluice_manifest(f"Churn classifier, version {version}", "churn.onnx", CHURN),
        },
    )

for version, weights in [(12, [2.0, -0.5, 0.8, -0.3]), (13, [2.2, -0.6, 0.7, -0.2])]:
    x, y = synthetic(version, RANKER, weights, classify=False)
    model = LinearRegression().fit(x, y)
    write(
        HERE / "ranker" / str(version),
        {
            "ranker.onnx": export(model, 4),
            "sluice-model.yaml": sluice_manifest(f"Relevance ranker, version {version}", "ranker.onnx", RANKER),
        },
    )
