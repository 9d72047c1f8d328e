"""``python -m extractive_qa.evaluate PREDICTIONS REFERENCES``: score any predictions file.

PREDICTIONS: a Kaggle-style ``ID,Answer`` CSV (``test_predictions.csv``, ``submission.csv``), a run's
``dev_predictions.jsonl``, or a SQuAD-style ``{id: answer}`` JSON (see :mod:`extractive_qa.core.answers`).
REFERENCES: an hw7 or SQuAD-format file with answers. Prints one JSON object: the course's metrics
(``em``, ``f1``), the official CMRC2018/DRCD ones (``em_cmrc2018``, ``f1_cmrc2018``, and ``official``
as the script prints them: percentages and their average), the counts, and the ids missing from or
extra in the predictions. Missing or extra ids exit with status 1 after the report (a missing answer
scores 0, as in the official script); nothing is dropped silently. A run's own ``dev_predictions.jsonl``
is scored on exactly the questions the run scored (a run of a preset with ``data.limit_dev`` scored the
file's first N), so the numbers agree with what the run logged; the report says how many of the file's
questions that is (``--all`` scores the whole file, the others as missing). The scores are computed by
:func:`~extractive_qa.core.metrics.score_answers`, the same code that scores dev during training.

    python -m extractive_qa.evaluate outputs/runs/.../dev_predictions.jsonl ../shared/data/hw7-drcd/hw7_dev.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .core.answers import read_answers
from .core.data import DataFormatError, read_examples
from .core.errors import run_cli
from .core.metrics import score_answers


def run_scored_ids(predictions: str) -> list[str] | None:
    """The question ids a run scored, when ``predictions`` is a run's own ``dev_predictions.jsonl`` (each row
    holds its scores); ``None`` for any other predictions file."""
    path = Path(predictions)
    if path.suffix.lower() != ".jsonl" or not (path.parent / "config_resolved.yaml").is_file():
        return None
    ids = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            if "em" not in row:
                return None
            ids.append(str(row["id"]))
    return ids


def evaluate(predictions: str, references: str, unanswerable: str = "error", whole_file: bool = False) -> dict:
    answers = read_answers(predictions)
    examples = read_examples(references, unanswerable=unanswerable)
    in_file = [ex for ex in examples if ex.answers]
    scored_by_run = None if whole_file else run_scored_ids(predictions)
    with_refs = in_file if scored_by_run is None else [ex for ex in in_file if ex.id in set(scored_by_run)]
    if not with_refs:
        raise DataFormatError(references, None, "no question has a reference answer (a test file?)",
                              "score against a file with answers (dev)")
    scores, _ = score_answers(answers, with_refs)
    ids = {ex.id for ex in with_refs}
    missing = [ex.id for ex in with_refs if ex.id not in answers]
    extra = sorted(set(answers) - {ex.id for ex in examples})
    unscored = [ex.id for ex in examples if not ex.answers and ex.id in answers]
    return {**scores, "official": {"EM": round(100 * scores["em_cmrc2018"], 3),
                                   "F1": round(100 * scores["f1_cmrc2018"], 3),
                                   "AVERAGE": round(50 * (scores["em_cmrc2018"] + scores["f1_cmrc2018"]), 3)},
            "questions": len(ids), "predictions": len(answers), "missing": len(missing), "extra": len(extra),
            "missing_ids": missing, "extra_ids": extra, "without_references": len(unscored),
            "questions_in_file": len(in_file),
            "scope": ("the whole file" if scored_by_run is None else
                      f"the {len(with_refs)} of the file's {len(in_file)} questions the run scored (its dev "
                      "predictions; --all scores the whole file)"),
            "predictions_file": str(predictions), "references_file": str(references)}


def arguments() -> argparse.ArgumentParser:
    """The command line of ``python -m extractive_qa.evaluate`` (also read by the docs' test of every command)."""
    parser = argparse.ArgumentParser(prog="python -m extractive_qa.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions")
    parser.add_argument("references")
    parser.add_argument("--all", action="store_true", dest="whole_file",
                        help="score a run's dev predictions against the whole file (questions it did not score: 0)")
    parser.add_argument("--unanswerable", choices=("error", "drop"), default="error",
                        help="SQuAD v2 unanswerable questions in REFERENCES: refuse the file, or leave them out")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = arguments()
    args = parser.parse_args(argv)
    try:
        report = evaluate(args.predictions, args.references, args.unanswerable, args.whole_file)
    except (FileNotFoundError, DataFormatError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(report, ensure_ascii=False, indent=2))
    if report["missing"] or report["extra"]:
        print(f"error: {report['missing']} questions have no prediction and {report['extra']} predictions match no "
              f"question (ids listed in missing_ids / extra_ids); missing ones scored 0", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)  # one-line errors, secrets kept out, a prompt end (core/errors.py)
