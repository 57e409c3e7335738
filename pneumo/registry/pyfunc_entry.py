"""Entry file of the logged MLflow model ("models from code"): MLflow runs it at load time."""

import mlflow

from pneumo.registry.pyfunc import PneumoniaClassifier

mlflow.models.set_model(PneumoniaClassifier())
