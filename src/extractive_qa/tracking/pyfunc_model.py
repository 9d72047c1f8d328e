"""The file MLflow executes to load a logged model ("models from code"): it only names the model class.
Logged by :func:`extractive_qa.tracking.registry.log_qa_model`; never imported by the package itself."""

import mlflow.models

from extractive_qa.tracking.registry import ExtractiveQAModel

mlflow.models.set_model(ExtractiveQAModel())
