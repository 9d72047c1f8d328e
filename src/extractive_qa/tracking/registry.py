"""A run's best model as an MLflow model: pyfunc-loadable, with its tokenizer, settings and an input
example; registered under a name when asked (``tracking.log_model=true``, ``tracking.register_model=NAME``).

Why pyfunc and not MLflow's ``transformers`` flavour: that flavour saves a model by building a
``transformers.pipeline`` for its task, and transformers 5 removed the extractive
``question-answering`` pipeline ("The task question-answering has been removed from transformers"),
so it cannot save any extractive-QA model there. The pyfunc model below carries the same Hugging
Face files (``artifacts/best_model/``: weights and tokenizer, loadable with
``AutoModelForQuestionAnswering``/``AutoTokenizer`` by anyone), the run's ``config_resolved.yaml``,
this package's code and its pinned dependencies, and predicts exactly as ``make predict`` does:
``pyfunc.load_model(uri).predict(pandas.DataFrame({"question": [...], "context": [...]}))`` returns one answer per row.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow.pyfunc
import pandas as pd

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def check_records(rows: list[dict]) -> None:
    """Every record has a non-empty string ``question`` and ``context``; else one error naming the record and the
    field, which MLflow's scoring server answers with HTTP 400 (a ``null`` context used to be answered as if it
    were the text "None")."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    for i, row in enumerate(rows):
        for field in ("question", "context"):
            value = row.get(field)
            if not isinstance(value, str) or not value.strip():
                shown = "missing" if field not in row else "null" if value is None or value != value else repr(value)
                raise MlflowException(f"record {i}: the field {field!r} is {shown}; every record needs a non-empty "
                                      f"{field} (text)", error_code=INVALID_PARAMETER_VALUE)


class ExtractiveQAModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: questions and contexts in, answers (context spans) out."""

    def load_context(self, context) -> None:
        from omegaconf import OmegaConf

        from ..engine.ensemble import load_member
        from ..engine.setup import make_accelerator

        run_cfg = OmegaConf.load(context.artifacts["config"])
        self.accelerator = make_accelerator(OmegaConf.create({"precision": {"mixed_precision": "auto"}}))
        self.member = load_member("model", Path(context.artifacts["model"]), run_cfg, self.accelerator, {})

    # The type hint MLflow asks for ("Add type hints to the `predict` method"): a DataFrame of question and context
    # columns, as the scoring server and pyfunc.predict pass it; its schema stays the one logged with the model.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        from ..core.data import Example
        from ..engine.ensemble import predict_members

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        check_records(rows)
        examples = [Example(id=str(row.get("id", i)), question=str(row["question"]), context=str(row["context"]),
                            context_key=f"c{i}") for i, row in enumerate(rows)]
        from ..engine.evaluation import EvaluationStopped
        from .serving import current_deadline

        try:  # behind `make serve`, the request's deadline stops the work when MLflow has answered 504
            _, predictions, _ = predict_members([self.member], examples, "auto", "auto", self.accelerator, "pyfunc",
                                                stop=current_deadline())
        except EvaluationStopped:
            from mlflow.exceptions import MlflowException

            raise MlflowException("the request ran past the server's timeout; its prediction was stopped") from None
        return [p.text for p in predictions]


def model_requirements() -> list[str]:
    """The package's own dependencies, each pinned to the version installed here (a local build tag such as
    ``+cpu`` dropped: no index has it). Given to MLflow instead of letting it infer them, which loads the model
    in a subprocess (7 s of a tiny model's 13 s log) and still misses torch and transformers, imported lazily,
    while naming ``extractive-qa``, which no index has either: the package travels in the model's ``code/``."""
    from importlib.metadata import PackageNotFoundError, requires, version

    from packaging.requirements import Requirement

    pinned = []
    for line in requires("extractive-qa") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue  # an optional extra (dev, optuna, team ...), not needed to predict
        try:
            pinned.append(f"{req.name}=={version(req.name).split('+')[0]}")
        except PackageNotFoundError:
            pinned.append(str(req))
    return pinned


def model_signature():
    """Questions and contexts (strings) in, one answer (a string) per row out: what ``predict`` takes and
    returns, stated rather than inferred (inferring it loads the model once more)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "question"), ColSpec("string", "context")]),
                          outputs=Schema([ColSpec("string")]))


def log_qa_model(uri: str, run_id: str, run_dir: Path, example: dict, register: str | None) -> tuple[str, str | None]:
    """``run_dir``'s best model as an MLflow 3 **logged model** of the run (``name="model"``): listed in the
    run's "Logged models" and the experiment's Models tab, linked to the run's step-0 metrics (its best dev
    scores), registered as ``register`` when given. ``(model id, registered version or None)``."""
    import pandas as pd
    from mlflow.models import Model

    from .store import fluent_uri

    experiment_id = mlflow.MlflowClient(uri).get_run(run_id).info.experiment_id
    with fluent_uri(uri, experiment_id):
        info = Model.log(artifact_path=None, name="model", flavor=mlflow.pyfunc, run_id=run_id, step=0,
                         python_model=str(Path(__file__).with_name("pyfunc_model.py")), code_paths=[str(PACKAGE_DIR)],
                         artifacts={"model": str(run_dir / "best_model"),
                                    "config": str(run_dir / "config_resolved.yaml")},
                         input_example=pd.DataFrame([example]), signature=model_signature(),
                         pip_requirements=model_requirements(), registered_model_name=register)
    version = str(info.registered_model_version) if register and info.registered_model_version else None
    if version:  # each version says what it scored, so the registry's list can be read without the runs
        client = mlflow.MlflowClient(uri)
        metrics = client.get_run(run_id).data.metrics
        for key in ("best/dev_em", "best/dev_f1"):
            if key in metrics:
                client.set_model_version_tag(register, version, key.replace("best/", ""), f"{metrics[key]:.4f}")
    log.info("logged model %s%s", info.model_id, f", registered as {register} version {version}" if version else "")
    return info.model_id, version


def mark_best_version(client, run_id: str, sweep_id: str) -> list[str]:
    """The registered versions of ``run_id`` (a sweep's best job) get the aliases ``best`` and
    ``sweep-<id>-best``: registering inside a sweep registers every job, and these say which one to use
    (``models:/NAME@best``). Returns ``NAME@version`` of each version marked."""
    marked = []
    for version in client.search_model_versions(f"run_id='{run_id}'"):
        for alias in ("best", f"sweep-{sweep_id}-best"):
            client.set_registered_model_alias(version.name, alias, version.version)
        marked.append(f"{version.name}@{version.version}")
    return marked


def open_downloaded_model(folder: Path) -> Path:
    """The run-dir-shaped folder (``best_model/`` + ``config_resolved.yaml``) inside a downloaded model."""
    inner = folder / "artifacts"
    if (folder / "MLmodel").is_file() and (inner / "config_resolved.yaml").is_file():
        return inner
    return folder
