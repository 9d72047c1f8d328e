"""What each training-config key is: the one table every list of keys is derived from.

A key's **role** says three things about it:

* ``resume`` -- it decides the training trajectory, so it is part of a run's resume identity:
  ``resume=auto`` only continues a run with the same values, ``resume=<path>`` refuses a change
  (:mod:`extractive_qa.engine.resume`);
* ``param`` -- it is a choice users compare: an MLflow param, a column when runs differ in it
  (:mod:`extractive_qa.tracking.params`, ``make report``);
* ``sweep`` -- typed on a ``-m`` command line it is part of the sweep's identity: re-running with
  another value is another sweep (:mod:`extractive_qa.tracking.sweep`).

Keys are looked up exactly, then by their longest listed prefix (``window.`` covers every window
key). A key the table does not know counts as ``trajectory``: a new key can never slip out of the
resume identity, and ``tests/core/test_roles.py`` fails until the table names it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Role:
    kind: str
    resume: bool  # part of the resume identity
    param: bool  # an MLflow param / report column
    sweep: bool  # part of a sweep's identity when typed as an override
    meaning: str


TRAJECTORY = Role("trajectory", True, True, True, "decides the weights: what trains, on what, how")
INSTANTIATION = Role("instantiation", True, False, True,
                     "Hydra's flag of a trajectory component: part of it, not a choice")
SETTING = Role("setting", False, True, True, "changes what the run scores, keeps or writes, not the weights")
RUNTIME = Role("runtime", False, True, True, "how the run runs (speed, logging, checkpoints); free to change on resume")
RECORD = Role("record", False, True, False, "written by the run about itself, not chosen")
NOTE = Role("note", False, False, False, "written by the run, kept in config_resolved.yaml only")
PLUMBING = Role("plumbing", False, False, False, "where and how the run is stored, tracked, downloaded or resumed")

ROLES: dict[str, Role] = {
    # ---- key (a trailing "." covers a subtree) ----- role ------- why
    "seed": TRAJECTORY,                     # weight init, dropout and batch order
    "epochs": TRAJECTORY,
    "max_steps": TRAJECTORY,
    "batch_size": TRAJECTORY,               # windows per micro-step before any OOM halving
    "grad_accum_steps": TRAJECTORY,
    "lr": TRAJECTORY,
    "warmup_ratio": TRAJECTORY,
    "max_grad_norm": TRAJECTORY,
    "group_by_length": TRAJECTORY,          # another batch order
    "compile": TRAJECTORY,                  # another kernel order: last-bit differences
    "attention": TRAJECTORY,                # another attention kernel: last-bit differences
    "tf32": TRAJECTORY,                     # fp32 matmuls at TF32 precision on a GPU
    "pad_to_multiple_of": TRAJECTORY,       # other padded shapes: last-bit differences
    "length_buckets": TRAJECTORY,           # other padded shapes: last-bit differences
    "model.name_or_path": TRAJECTORY,
    "model.init": TRAJECTORY,
    "model.tokenizer": TRAJECTORY,
    "model.revision": TRAJECTORY,
    "model.config_overrides.": TRAJECTORY,  # dropout, sizes of a random-init model
    "model.trust_remote_code": SETTING,     # allows a model's own code; the weights are named above
    "model.commit": RECORD,                 # the commit (or folder digest) the weights were loaded from
    "window.": TRAJECTORY,                  # what the model is trained on
    "optimizer.": TRAJECTORY,
    "optimizer._partial_": INSTANTIATION,
    "scheduler.": TRAJECTORY,
    "scheduler._partial_": INSTANTIATION,
    "precision.mixed_precision": TRAJECTORY,  # the precision the run really trains in
    "precision.requested": RECORD,          # what was asked for (auto)
    "precision.reason": NOTE,               # why auto chose it
    "data.limit_train": TRAJECTORY,         # the files' contents are in the identity as digests
    "data.limit_dev": TRAJECTORY,           # which questions pick the best checkpoint
    "data.limit_test": SETTING,
    "data.name": SETTING,
    "data.dir": SETTING,                    # shown by its last component; the digests decide
    "data.train_file": SETTING,
    "data.dev_file": SETTING,
    "data.test_file": SETTING,
    "data.max_answer_len": SETTING,
    "data.unanswerable": SETTING,           # error | drop: a file either trains or stops
    "data.cache_dir": PLUMBING,
    "data.archive_url": PLUMBING,
    "data.archive_limits.": PLUMBING,          # how big an archive may unpack: refused beyond, never another result
    "data.urls.": PLUMBING,
    "experiment_name": SETTING,             # the resume identity holds it on its own
    "optimize_metric": SETTING,             # which evaluation is kept as the best model
    "max_answer_len": SETTING,              # post-processing: dev scores, predictions
    "top_k": SETTING,
    "n_best": SETTING,
    "span_score": SETTING,
    "answer_cleanup": SETTING,
    "eval_steps": SETTING,                  # when dev is scored, so which checkpoint is best
    "predict_test": SETTING,
    "save_model": SETTING,
    "csv_strip_commas": SETTING,
    "eval_batch_tokens": RUNTIME,
    "num_workers": RUNTIME,
    "logging_steps": RUNTIME,
    "checkpoint_steps": RUNTIME,
    "checkpoint_minutes": RUNTIME,
    "keep_checkpoints": RUNTIME,
    "feature_cache": RUNTIME,
    "early_stopping.": TRAJECTORY,             # where training stops, as max_steps
    "search.": PLUMBING,                       # which Optuna trial a sweep job reports to
    "resume": PLUMBING,
    "resume_allow_changes": PLUMBING,
    "paths.": PLUMBING,
    "tracking.": PLUMBING,
    "hydra.": PLUMBING,                     # only as overrides: sweeper, launcher and run-dir settings
}

# Config groups, as typed in overrides (``model=tiny``): what choosing another option does.
GROUPS: dict[str, Role] = {
    "model": TRAJECTORY, "data": TRAJECTORY, "window": TRAJECTORY, "optimizer": TRAJECTORY, "scheduler": TRAJECTORY,
    "precision": TRAJECTORY, "experiment": TRAJECTORY, "debug": TRAJECTORY,
    "hparams_search": SETTING,  # the search space itself joins the sweep's identity
    "tracking": PLUMBING, "paths": PLUMBING, "launcher": PLUMBING,
}


def known_role(key: str) -> Role | None:
    """The role the table gives ``key`` (exact entry, else the longest prefix entry), ``None`` if none."""
    if key in ROLES:
        return ROLES[key]
    prefixes = [p for p in ROLES if p.endswith(".") and key.startswith(p)]
    return ROLES[max(prefixes, key=len)] if prefixes else None


def role_of(key: str) -> Role:
    """The role of a flattened config key (``window.doc_overlap``); unknown keys decide the trajectory."""
    return known_role(key) or TRAJECTORY


def role_of_override(override: str) -> Role:
    """The role of a command-line override (``lr=1e-3``, ``model=tiny``, ``+hydra.x=y``, ``~key``)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return GROUPS.get(key) or role_of(key)
