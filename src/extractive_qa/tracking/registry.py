"""A run's best model as an MLflow model: pyfunc-loadable, with its tokenizer, settings and an input
example; registered under a name when asked (``tracking.log_model=true``, ``tracking.register_model=NAME``).

Why pyfunc and not MLflow's ``transformers`` flavour: that flavour saves a model by building a
``transformers.pipeline`` for its task, and transformers 5 removed the extractive
``question-answering`` pipeline ("The task question-answering has been removed from transformers"),
so it cannot save any extractive-QA model there. The pyfunc model below carries the same Hugging
Face files (``artifacts/best_model/``: weights and tokenizer, loadable with
``AutoModelForQuestionAnswering``/``AutoTokenizer`` by anyone), the run's ``config_resolved.yaml`` and
this package's code, and predicts exactly as ``make predict`` does: ``pyfunc.load_model(uri).predict(
pandas.DataFrame({"question": [...], "context": [...]}))`` returns one answer per row.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow.pyfunc

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]


class ExtractiveQAModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: questions and contexts in, answers (context spans) out."""

    def load_context(self, context) -> None:
        from omegaconf import OmegaConf

        from ..engine.ensemble import load_member
        from ..engine.setup import make_accelerator

        run_cfg = OmegaConf.load(context.artifacts["config"])
        self.accelerator = make_accelerator(OmegaConf.create({"precision": {"mixed_precision": "auto"}}))
        self.member = load_member("model", Path(context.artifacts["model"]), run_cfg, self.accelerator, {})

    def predict(self, context, model_input, params=None) -> list[str]:
        from ..core.data import Example
        from ..engine.ensemble import predict_members

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        examples = [Example(id=str(row.get("id", i)), question=str(row["question"]), context=str(row["context"]),
                            context_key=f"c{i}") for i, row in enumerate(rows)]
        _, predictions, _ = predict_members([self.member], examples, "auto", "auto", self.accelerator, "pyfunc")
        return [p.text for p in predictions]


def log_qa_model(client, run_id: str, run_dir: Path, example: dict, register: str | None) -> str | None:
    """Save ``run_dir``'s best model as a pyfunc model, log it as the run's ``model`` artifact, register it
    as ``register`` when given; the new model version (or ``None``)."""
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            path, python_model=str(Path(__file__).with_name("pyfunc_model.py")), code_paths=[str(PACKAGE_DIR)],
            artifacts={"model": str(run_dir / "best_model"), "config": str(run_dir / "config_resolved.yaml")},
            input_example=pd.DataFrame([example]))
        client.log_artifacts(run_id, str(path), "model")
    if not register:
        return None
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(register)
    except MlflowException as err:
        if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/model"
    version = client.create_model_version(register, source, run_id=run_id)
    log.info("registered model %s version %s (%s)", register, version.version, source)
    return str(version.version)


def open_downloaded_model(folder: Path) -> Path:
    """The run-dir-shaped folder (``best_model/`` + ``config_resolved.yaml``) inside a downloaded model."""
    inner = folder / "artifacts"
    if (folder / "MLmodel").is_file() and (inner / "config_resolved.yaml").is_file():
        return inner
    return folder
