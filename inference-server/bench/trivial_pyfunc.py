"""Saves the MLflow pyfunc that serve-mlflow.sh compares against: four float columns in, the
index of the largest value out (the same work order of magnitude as the iris graph: trivial)."""
import sys

import mlflow.pyfunc
import numpy as np


class Trivial(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return np.argmax(model_input.to_numpy(dtype=np.float64), axis=1)


mlflow.pyfunc.save_model(sys.argv[1], python_model=Trivial())
