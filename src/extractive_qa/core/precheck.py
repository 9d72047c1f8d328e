"""A bad config value refused in under a second, before an entry point imports torch.

``python -m extractive_qa.train epochs=0`` would otherwise spend 1.2 s importing torch and transformers
before Hydra hands the config over (1.7 s in all on a 2-core machine). So the entry point first composes
the same config with Hydra's compose API and checks it (:mod:`.schema`): a bad value exits 2 with its one
line at once (0.6 s). Anything this cannot decide -- a sweep (``-m``), Hydra's own flags, an override Hydra
rejects -- goes on to the normal path, where the same check runs again inside the job.

A process that has torch imported already (forked from one that had: a warm worker, a notebook's kernel) skips it:
there is no import left to save, and a third composition of the config (Hydra composes it twice itself) costs
0.24 s of a tiny run's 1.3 s there. The job's own check refuses a bad value with the same line and exit 2, and
removes the run folder Hydra made for it.
"""

from __future__ import annotations

import sys

from .config import CONF_DIR, to_plain
from .schema import ConfigError, check_predict_config, check_train_config

_CHECKS = {"train": check_train_config, "predict": check_predict_config}


def refuse_bad_config(config_name: str, argv: list[str]) -> None:
    """Exit 2 with one line per bad key if the config ``argv`` composes to has a value out of its range."""
    if any(arg.startswith("-") for arg in argv):  # -m (a sweep: checked per job), --cfg, --help, ...
        return
    if "torch" in sys.modules:  # nothing to save (see above): the job checks the same values
        return
    from hydra import compose, initialize_config_dir

    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            plain = to_plain(compose(config_name, overrides=argv))
    except Exception:  # noqa: BLE001 - Hydra reports its own errors, with its own wording, on the normal path
        return
    try:
        _CHECKS[config_name](plain)
    except ConfigError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
