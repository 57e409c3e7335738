"""Entry file of the logged MLflow model ("models from code"): MLflow runs it at load time."""

import mlflow

from pneumo.pyfunc_model import PneumoniaClassifier

mlflow.models.set_model(PneumoniaClassifier())
