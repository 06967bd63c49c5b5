"""Saves the ONNX models of tests/mlflow_parity.rs with `mlflow.onnx.save_model`, as MLflow
users save them: scikit-learn models converted by skl2onnx (ZipMap on and off), signatures
inferred from tensors, from a DataFrame, or none, and a hand-built graph with two named inputs
and two outputs. Usage: python save.py OUT (each model in OUT/<name>)."""

import sys

import mlflow.onnx
import numpy as np
import onnxruntime as ort
import pandas as pd
from mlflow.models import infer_signature
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LinearRegression, LogisticRegression

out = sys.argv[1]
X = np.array(
    [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3],
     [6.3, 2.5, 5.0, 1.9], [5.8, 2.7, 4.1, 1.0], [6.0, 2.2, 4.0, 1.0]],
    dtype=np.float32,
)
y = [0, 0, 2, 2, 1, 1]


def outputs_of(onx, feed):
    session = ort.InferenceSession(onx.SerializeToString())
    return {o.name: v for o, v in zip(session.get_outputs(), session.run(None, feed))}


classifier = LogisticRegression(max_iter=1000).fit(X, y)
tensor_input = [("input", FloatTensorType([None, 4]))]
plain = convert_sklearn(classifier, initial_types=tensor_input,
                        options={id(classifier): {"zipmap": False}})
# A tensor signature with named outputs (label, probabilities).
mlflow.onnx.save_model(plain, f"{out}/classifier",
                       signature=infer_signature(X, outputs_of(plain, {"input": X})))
# The same graph without a signature.
mlflow.onnx.save_model(plain, f"{out}/classifier_nosig")
# The converter's defaults: a ZipMap answers {label: probability} per row; no signature.
mlflow.onnx.save_model(convert_sklearn(classifier, initial_types=tensor_input), f"{out}/zipmap")

regressor = LinearRegression().fit(X[:, :3], X[:, 3])
graph = convert_sklearn(regressor, initial_types=[("input", FloatTensorType([None, 3]))])
# A tensor signature with one unnamed output of shape [-1, 1].
mlflow.onnx.save_model(graph, f"{out}/regressor",
                       signature=infer_signature(X[:, :3], outputs_of(graph, {"input": X[:, :3]})["variable"]))
# A column signature, as a DataFrame input example gives it.
frame = pd.DataFrame(X[:, :3], columns=["a", "b", "c"])
mlflow.onnx.save_model(graph, f"{out}/regressor_columns",
                       signature=infer_signature(frame, regressor.predict(X[:, :3])))

# Two named inputs, two outputs.
a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 1])
b = helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 1])
total = helper.make_tensor_value_info("sum", TensorProto.FLOAT, [None, 1])
product = helper.make_tensor_value_info("prod", TensorProto.FLOAT, [None, 1])
two = helper.make_model(
    helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["prod"])],
        "two_inputs", [a, b], [total, product],
    ),
    opset_imports=[helper.make_opsetid("", 17)],
)
two.ir_version = 8
A = np.array([[1.5], [2.0]], dtype=np.float32)
B = np.array([[2.0], [3.0]], dtype=np.float32)
mlflow.onnx.save_model(two, f"{out}/two_inputs",
                       signature=infer_signature({"a": A, "b": B}, {"sum": A + B, "prod": A * B}))
print("saved")
