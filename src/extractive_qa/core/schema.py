"""Every key of the training and predict configs with its type and range, checked before anything runs.

A bad value (``epochs=0``, ``batch_size=0``, ``seed=abc``, ``lr=-1``, ``window.doc_overlap=400``) ends the
command in one line per bad key -- the key, the value, what is wrong and the fix -- with exit code 2, before
any model, data, run folder or MLflow run is touched (:func:`check_train_config`, :func:`check_predict_config`).

Why pydantic, not Hydra's structured configs: a structured config (a dataclass schema) checks *types* while
Hydra merges overrides, but it has no ranges -- ``epochs: int`` takes ``0`` and ``lr: float`` takes ``-1`` --
so the ranges would be hand-written checks beside it anyway, and it would also pin each config group to one
class, which the swappable groups (an optimizer, a scheduler, a tracker named by ``_target_``) must not be.
Pydantic 2 states type and range in one annotation (``PositiveInt``, ``Field(ge=0, lt=1)``, ``Literal``),
reports the key path and the input of every error, and is already installed (MLflow depends on it). The
groups stay open (``extra="allow"``): a preset may carry keys of its own; the keys this project reads are
typed here. ``tests/core/test_schema.py`` fails when a key of the composed configs has no entry here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from .errors import InputError
from .metrics import METRICS
from .postprocess import SPAN_SCORES
from .windowing import TRAIN_STRATEGIES, WindowConfig

# Mirrors of engine/ constants (core/ stays free of torch); tests/core/test_schema.py keeps them equal.
ATTENTION_KERNELS = ("auto", "sdpa", "eager")
MIXED_PRECISIONS = ("auto", "bf16", "fp16", "no", "fp32")

_OPEN = ConfigDict(extra="allow", allow_inf_nan=False)  # lr=inf passed and died at step 2


def _fix(text: str) -> Any:
    """The fix a user reads in the error line, stored with the field."""
    return {"fix": text}


def _count(fix: str, minimum: int = 1):
    return Annotated[int, Field(ge=minimum, strict=False, json_schema_extra=_fix(fix))]


def _choice(values, fix: str):
    return Annotated[Literal[tuple(values)], Field(json_schema_extra=_fix(fix))]  # type: ignore[valid-type]


def _flag(fix: str):
    # Strict: Hydra parses true/false itself, and a lax "no" would read as True where the code does bool("no").
    return Annotated[StrictBool, Field(json_schema_extra=_fix(fix))]


_AUTO_OR_COUNT = Literal["auto"] | Annotated[int, Field(ge=1)]
_BETA = Annotated[float, Field(ge=0, lt=1)]


class Window(BaseModel):
    model_config = _OPEN
    max_question_len: _count("window.max_question_len=64 (question tokens kept)")
    max_seq_len: _count("window.max_seq_len=384 (tokens per window), or null with max_paragraph_len") | None
    max_paragraph_len: _count("window.max_paragraph_len=150 (context tokens per window), or null") | None = None
    doc_stride: _count("window.doc_stride=32 (step between windows), or null with doc_overlap") | None = None
    doc_overlap: _count("window.doc_overlap=128 (tokens two windows share), or null", 0) | None = None
    stop_at_paragraph_end: _flag("window.stop_at_paragraph_end=true or false") = True
    train_strategy: _choice(TRAIN_STRATEGIES, "window.train_strategy=all_windows or random_offset") = "all_windows"
    train_offset_range: _count("window.train_offset_range=64, or null (half a paragraph)", 0) | None = None

    @model_validator(mode="after")
    def _fits(self) -> Window:
        # The window's own checks (sizes that leave room for context, one of each pair set) say the fix.
        WindowConfig(**{k: getattr(self, k) for k in WindowConfig.__dataclass_fields__ if hasattr(self, k)})
        return self


class Model(BaseModel):
    model_config = _OPEN
    name_or_path: Annotated[str, Field(min_length=1, json_schema_extra=_fix(
        "model.name_or_path=bert-base-chinese (a hub name or a local folder)"))]
    init: _choice(("pretrained", "random"), "model.init=pretrained or random") = "pretrained"
    tokenizer: str | None = None
    revision: str | int | None = None
    trust_remote_code: _flag("model.trust_remote_code=false or true") = False
    config_overrides: dict = {}
    commit: str | None = None  # written by the run: the commit its weights were loaded at


class ArchiveLimits(BaseModel):
    model_config = _OPEN
    max_mb: _count("data.archive_limits.max_mb=2048 (megabytes an archive may unpack to)", 1) | None = None
    max_members: _count("data.archive_limits.max_members=10000", 1) | None = None
    max_ratio: Annotated[float, Field(gt=1, allow_inf_nan=False, json_schema_extra=_fix(
        "data.archive_limits.max_ratio=100 (uncompressed / compressed size of a member)"))] | None = None


class Data(BaseModel):
    model_config = _OPEN
    name: str | int | Annotated[float, Field(allow_inf_nan=True)]  # Hydra reads `data.name=nan` as a number
    dir: str
    train_file: str
    dev_file: str
    test_file: str
    cache_dir: str
    archive_url: str | None = None
    archive_limits: ArchiveLimits | None = None
    urls: dict = {}
    max_answer_len: _count("data.max_answer_len=50 (tokens)")
    unanswerable: _choice(("error", "drop"), "data.unanswerable=error or drop") = "error"
    limit_train: _count("data.limit_train=1000, or null for every question") | None = None
    limit_dev: _count("data.limit_dev=200, or null for every question") | None = None
    limit_test: _count("data.limit_test=200, or null for every question") | None = None


class Optimizer(BaseModel):
    model_config = _OPEN
    target: Annotated[str, Field(alias="_target_")]
    partial: Annotated[StrictBool, Field(alias="_partial_")] = True
    lr: float | None = None  # ${lr} in every preset: its range is checked there, once
    fused: _flag("optimizer.fused=true or false") | None = None
    weight_decay: Annotated[float, Field(ge=0, json_schema_extra=_fix("optimizer.weight_decay=0.01 (0 or more)"))] \
        | None = None
    betas: Annotated[tuple[_BETA, _BETA] | None, Field(json_schema_extra=_fix(
        "optimizer.betas=[0.9,0.999] (each 0 or more, below 1)"))] = None
    eps: Annotated[float, Field(gt=0, json_schema_extra=_fix("optimizer.eps=1e-8 (above 0)"))] | None = None


class Scheduler(BaseModel):
    model_config = _OPEN
    target: Annotated[str, Field(alias="_target_")]
    partial: Annotated[StrictBool, Field(alias="_partial_")] = True
    name: str | None = None


class Precision(BaseModel):
    model_config = _OPEN
    mixed_precision: _choice(MIXED_PRECISIONS, "precision=auto (or bf16, fp16, fp32)")


class EarlyStopping(BaseModel):
    model_config = _OPEN
    patience: _count("early_stopping.patience=3 (evaluations without improvement), or null") | None = None
    min_delta: Annotated[float, Field(ge=0, json_schema_extra=_fix(
        "early_stopping.min_delta=0.001 (the least improvement that counts, 0 or more)"))] = 0.0


class TrainConfig(BaseModel):
    """``conf/train.yaml`` with its groups, as composed (interpolations resolved)."""

    model_config = _OPEN
    # Hydra reads `experiment_name=nan` or `=2024` as a number; the run uses str() of it, which is fine.
    experiment_name: Annotated[str, Field(min_length=1), AfterValidator(lambda v: check_experiment_name(v))] | int | \
        Annotated[float, Field(allow_inf_nan=True)]
    seed: Annotated[int, Field(json_schema_extra=_fix("seed=42 (a whole number)"))]
    epochs: _count("epochs=2 (passes over the training data, at least 1)")
    batch_size: _count("batch_size=16 (windows per micro-step, at least 1)")
    eval_batch_tokens: Annotated[_AUTO_OR_COUNT, Field(json_schema_extra=_fix(
        "eval_batch_tokens=auto (or padded tokens per evaluation batch, e.g. 8192)"))]
    grad_accum_steps: _count("grad_accum_steps=1 (micro-steps per optimizer step)")
    lr: Annotated[float, Field(gt=0, json_schema_extra=_fix("lr=3e-5 (a learning rate above 0)"))]
    # 0 is allowed: no warm-up is a setting people use (HF's default); 1 would leave no step to train at full rate.
    warmup_ratio: Annotated[float, Field(ge=0, lt=1, json_schema_extra=_fix(
        "warmup_ratio=0.1 (the share of steps spent warming up: 0 or more, below 1)"))]
    max_grad_norm: Annotated[float, Field(gt=0, json_schema_extra=_fix(
        "max_grad_norm=1.0 (above 0), or null for no clipping"))] | None
    max_steps: _count("max_steps=100, or null for every epoch") | None
    optimize_metric: _choice(METRICS, "optimize_metric=em (or f1, em_cmrc2018, f1_cmrc2018)")
    max_answer_len: _count("max_answer_len=50 (the longest answer in tokens, at least 1)")
    top_k: _count("top_k=20 (start/end candidates per window)")
    n_best: _count("n_best=20 (0: no n-best lists)", 0)
    span_score: _choice(SPAN_SCORES, "span_score=logit_sum or log_softmax")
    answer_cleanup: _flag("answer_cleanup=false or true")
    logging_steps: _count("logging_steps=50 (optimizer steps between train/* logs)")
    eval_steps: _count("eval_steps=500, or null for epoch ends only") | None
    num_workers: _count("num_workers=0 (data-loader worker processes)", 0)
    group_by_length: _flag("group_by_length=true or false")
    compile: _flag("compile=false or true")
    tf32: _flag("tf32=true or false")
    attention: _choice(ATTENTION_KERNELS, "attention=auto (or sdpa, eager)")
    pad_to_multiple_of: Annotated[_AUTO_OR_COUNT, Field(json_schema_extra=_fix("pad_to_multiple_of=auto (or 8, 64)"))]
    length_buckets: Annotated[Literal["auto"] | Annotated[int, Field(ge=0)], Field(json_schema_extra=_fix(
        "length_buckets=auto (7 padded lengths), a number, or 0 (every multiple of pad_to_multiple_of)"))] = "auto"
    predict_test: _flag("predict_test=true or false")
    save_model: _flag("save_model=true or false")
    csv_strip_commas: _flag("csv_strip_commas=false or true")
    checkpoint_steps: _count("checkpoint_steps=500, or null for none") | None
    keep_checkpoints: _count("keep_checkpoints=2 (newest checkpoints kept, at least 1)")
    resume: str | None
    resume_allow_changes: _flag("resume_allow_changes=false or true")
    feature_cache: _flag("feature_cache=true or false")
    checkpoint_minutes: Annotated[float, Field(gt=0, json_schema_extra=_fix(
        "checkpoint_minutes=10 (minutes of training between checkpoints), or null"))] | None = None
    early_stopping: EarlyStopping = EarlyStopping()
    search: dict | None = None
    model: Model
    data: Data
    window: Window
    optimizer: Optimizer
    scheduler: Scheduler
    precision: Precision


class PredictConfig(BaseModel):
    """``conf/predict.yaml`` as composed."""

    model_config = _OPEN
    run_dir: str | None
    run_dirs: list[str]
    top_k: _count("top_k=3 (the best runs to ensemble), or null") | None
    optimize_metric: _choice(METRICS, "optimize_metric=em (or f1, em_cmrc2018, f1_cmrc2018), or null") | None
    sweep: str | int | Annotated[float, Field(allow_inf_nan=True)] | None
    experiment_name: str | None
    model_uri: str | None
    combine: _choice(("auto", "logits", "nbest"), "combine=auto (or logits, nbest)")
    test_file: str | None
    dev_file: str
    output: str | None
    eval_batch_tokens: Annotated[_AUTO_OR_COUNT, Field(json_schema_extra=_fix(
        "eval_batch_tokens=null (the run's), auto, or padded tokens per batch such as 8192"))] | None
    mixed_precision: _choice(MIXED_PRECISIONS, "mixed_precision=auto (or no, bf16, fp16)")
    csv_strip_commas: _flag("csv_strip_commas=null (the run's), true or false") | None
    answer_cleanup: _flag("answer_cleanup=null (the run's), true or false") | None


def check_experiment_name(name: str) -> str:
    """``name`` when it is a name: an experiment's name becomes a folder (its artifacts, its reports), so a path --
    ``../../tmp/x``, ``/abs``, ``a/b`` -- would put every artifact of its runs wherever it points."""
    text = str(name)
    if "/" in text or "\\" in text or ".." in text or text.startswith("~") or "\x00" in text or not text.strip():
        raise ValueError(f"experiment_name={text}: a name, not a path (no '/', '\\', '..', leading '~'). "
                         "Fix: experiment_name=my-experiment")
    return text


class ConfigError(InputError):
    """Config values out of their type or range: one line per bad key (key, value, problem, fix)."""


def _key_path(schema: type[BaseModel], loc: tuple) -> list[str]:
    """The config keys of an error's location, without pydantic's names of union branches (``int``,
    ``literal['auto']``) or validators."""
    model: Any = schema
    path = []
    for part in loc:
        fields = getattr(model, "model_fields", None) or {}
        name = next((n for n, f in fields.items() if part in (n, f.alias)), None)
        if name is None:
            if isinstance(part, int) and path:  # an item of a list-valued key
                path[-1] = f"{path[-1]}[{part}]"
            continue
        path.append(fields[name].alias or name)
        model = _model_in(fields[name].annotation)
    return path


def _line(key: str, errors: list[dict], schema: type[BaseModel]) -> str:
    """One line for ``key`` from its errors (a value that fits no branch of a union has one per branch: the
    last, the count or number branch, says the most)."""
    own = [e for e in errors if e["msg"].startswith("Value error, ")]  # a check of ours says the most, in any branch
    error = own[0] if own else errors[-1]
    problem = error["msg"]
    if problem.startswith("Value error, "):  # the window's own check: its message already says the fix
        return problem.removeprefix("Value error, ")
    fix = _fix_of(schema, key.replace("[", ".[").split(".")) if key else None
    value = error.get("input")
    shown = "null" if value is None else value
    return f"{key}={shown}: {problem[0].lower()}{problem[1:]}" + (f". Fix: {fix}" if fix else "")


def _fix_of(schema: type[BaseModel], path: list[str]) -> str | None:
    """The ``fix`` stored with the field at ``path`` (through nested models, optional and annotated types)."""
    model: Any = schema
    fix = None
    for part in path:
        fields = getattr(model, "model_fields", None)
        if not fields or part not in fields:
            break
        info = fields[part]
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        fix = extra.get("fix") or _fix_in_metadata(info.annotation) or fix
        model = _model_in(info.annotation)
    return fix


def _args(annotation) -> tuple:
    return getattr(annotation, "__args__", ()) or ()


def _fix_in_metadata(annotation) -> str | None:
    for arg in (annotation, *_args(annotation)):
        for meta in getattr(arg, "__metadata__", ()):
            extra = getattr(meta, "json_schema_extra", None)
            if isinstance(extra, dict) and "fix" in extra:
                return extra["fix"]
    return None


def _model_in(annotation):
    for arg in (annotation, *_args(annotation)):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _check(schema: type[BaseModel], cfg: dict) -> None:
    try:
        schema.model_validate(cfg)
    except ValidationError as err:
        by_key: dict[str, list[dict]] = {}
        for error in err.errors(include_url=False):
            by_key.setdefault(".".join(_key_path(schema, error["loc"])), []).append(error)
        raise ConfigError("\n".join(f"error: {_line(k, v, schema)}" for k, v in by_key.items())) from None


def check_train_config(cfg: dict) -> None:
    """Raise :class:`ConfigError` (one ``error: ...`` line per bad key) if ``cfg`` (the composed training
    config, resolved to plain containers) holds a value out of its type or range."""
    _check(TrainConfig, cfg)


def check_predict_config(cfg: dict) -> None:
    """As :func:`check_train_config`, for ``conf/predict.yaml``."""
    _check(PredictConfig, cfg)
