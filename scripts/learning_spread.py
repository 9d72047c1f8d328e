"""How far the model families' tiny models learn the synthetic set -- the run ``tests/test_model_families.py`` checks
-- over seeds x precision x threads x CPU capability, to set that test's bars far from both outcomes on every CPU.
``--families tiny`` is the project's own tiny BERT at the seed sweep's settings (``tests/conftest.py: seed_sweep``,
checked by ``tests/test_train.py``).

    .venv/bin/python scripts/learning_spread.py /tmp/spread                      # both families, the whole grid
    .venv/bin/python scripts/learning_spread.py /tmp/spread --families xlm-roberta-base --seeds 1
    .venv/bin/python scripts/learning_spread.py /tmp/spread --families tiny --epochs 3

Each run is a fresh ``python -m extractive_qa.train`` with ``OMP_NUM_THREADS`` and ``ATEN_CPU_CAPABILITY`` set as the
grid says (``default`` leaves the CPU's own); the untrained score is the same run with lr 1e-12 (the weights do not
move). One line per run: best dev EM and the training loss's first and last logged values. Runs already done in the
folder are read back, not repeated. Needs ../shared (XLM-R's tokenizer is trained on hw7's paragraphs).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

FAMILIES = ("chinese-electra-base", "xlm-roberta-base")
# Per family: the training overrides of the test that checks it (families: the family fixture; tiny: the seed sweep).
SETTINGS = {"chinese-electra-base": ["model.init=random", "lr={lr}", "logging_steps=10"],
            "xlm-roberta-base": ["model.init=random", "lr={lr}", "logging_steps=10"],
            "tiny": ["lr={lr}", "warmup_ratio=0.1", "logging_steps=5"]}
DEFAULT_LR = {"chinese-electra-base": "2e-3", "xlm-roberta-base": "2e-3", "tiny": "1e-3"}


def model_folder(root: Path, family: str) -> Path:
    from helpers import HW7_DIR  # the tests' own builders: the same tokenizers and configs the test uses
    from helpers.families import electra_dir, xlm_roberta_dir

    folder = root / f"model-{family}"
    if not (folder / "config.json").is_file():
        if family == "tiny":
            from extractive_qa.core.synthetic import write_tiny_model_dir

            write_tiny_model_dir(folder)
        elif family == "chinese-electra-base":
            electra_dir(folder)
        else:
            xlm_roberta_dir(folder, json.loads((HW7_DIR / "hw7_train.json").read_text(encoding="utf-8"))["paragraphs"])
    return folder


def one_run(root: Path, family: str, seed: int, precision: str, threads: int, isa: str, epochs: int,
            lr: str | None = None) -> dict:
    from helpers import NO_DROPOUT

    lr = lr or DEFAULT_LR[family]

    out = root / f"{family}-s{seed}-{precision}-t{threads}-{isa}-e{epochs}-lr{lr}"
    if not (out / "metrics.json").is_file():
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if isa != "default":
            env["ATEN_CPU_CAPABILITY"] = isa
        # The test's own settings (SETTINGS), for as many epochs as asked.
        subprocess.run([sys.executable, "-m", "extractive_qa.train", f"model={family}",
                        f"model.name_or_path={model_folder(root, family)}", f"data.dir={root / 'data'}",
                        "data.limit_train=1500", "batch_size=32", *(o.format(lr=lr) for o in SETTINGS[family]),
                        *NO_DROPOUT,
                        "tracking=none", "predict_test=false", f"paths.output_dir={root}/outputs",
                        f"paths.cache_dir={root}/cache", f"seed={seed}", f"epochs={epochs}", f"precision={precision}",
                        f"hydra.run.dir={out}"], env=env, cwd=ROOT, check=True, capture_output=True)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/loss"] for m in history if "train/loss" in m]
    best = json.loads((out / "metrics.json").read_text())["best_dev_em"]
    return {"family": family, "seed": seed, "precision": precision, "threads": threads, "isa": isa, "lr": lr,
            "best_dev_em": best, "first_dev_em": next(m["dev/em"] for m in history if "dev/em" in m),
            "loss_first": losses[0], "loss_last": losses[-1], "loss_drop": losses[0] / losses[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=[*FAMILIES, "tiny"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3, 4])
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--isas", nargs="+", default=["default", "avx2"])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    from extractive_qa.core.synthetic import write_synthetic_hw7

    root = args.folder.resolve()
    if not (root / "data" / "hw7_train.json").is_file():
        write_synthetic_hw7(root / "data", n_train=1000)  # the tests' synthetic set (conftest.py: synthetic)
    for family in args.families:
        rows = [one_run(root, family, s, p, t, i, args.epochs) for s, p, t, i in
                itertools.product(args.seeds, args.precisions, args.threads, args.isas)]
        for row in rows:
            print(json.dumps(row), flush=True)
        untrained = [one_run(root, family, s, "bf16", 1, "default", 1, lr="1e-12") for s in args.seeds]
        ems = [r["best_dev_em"] for r in rows]
        print(json.dumps({"family": family, "runs": len(rows), "best_dev_em": [min(ems), max(ems)],
                          "best_over_first": min(r["best_dev_em"] / max(r["first_dev_em"], 1e-9) for r in rows),
                          "loss_drop_min": min(r["loss_drop"] for r in rows),
                          "untrained_best_dev_em": [r["best_dev_em"] for r in untrained]}), flush=True)


if __name__ == "__main__":
    main()
