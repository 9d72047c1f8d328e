import json

import pytest
from hydra import compose, initialize_config_dir

from extractive_qa.core.analysis import data_report
from extractive_qa.core.config import CONF_DIR
from extractive_qa.core.data import read_examples
from extractive_qa.core.features import window_config
from extractive_qa.core.postprocess import PostprocessSettings
from extractive_qa.core.windowing import encode_examples, eval_windows

from helpers import HW7_DIR, SQUAD_DIR, needs_shared, run_module

DATASETS = {  # file -> data preset whose max_answer_len applies
    HW7_DIR / "hw7_dev.json": "hw7",
    SQUAD_DIR / "DRCD_dev.json": "drcd",
    SQUAD_DIR / "cmrc2018_dev.json": "cmrc2018",
}


@needs_shared
@pytest.mark.parametrize("window_preset", ["seed", "default"])
@pytest.mark.parametrize("path", list(DATASETS), ids=lambda p: p.name)
def test_oracle_em_is_at_least_0998(bert_tokenizer, path, window_preset):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("report", overrides=[f"window={window_preset}", f"data={DATASETS[path]}"])
    window = window_config(cfg.window)
    examples = read_examples(path)
    enc = encode_examples(examples.examples, bert_tokenizer, window)
    windows = eval_windows(enc, window)
    report = data_report(examples, enc, windows, window, bert_tokenizer.unk_token_id, PostprocessSettings.from_cfg(cfg))
    assert report["oracle_em"] >= 0.998, report
    assert report["answers_reachable"] == 1.0
    assert report["questions"] == len(examples)
    if path.name.startswith("hw7"):
        assert report["answers_inside_a_token"] == 3  # "8" in "80", "8" in "81", "128" in "128KB"
        assert 0.3 < report["paragraphs_with_unk"] < 0.45


@needs_shared
def test_report_cli_prints_one_json_object():
    out = run_module("extractive_qa.report", f"data.dir={HW7_DIR}", "model=tiny", "data.limit_dev=50")
    report = json.loads(out.stdout)
    assert report["questions"] == 50 and report["oracle_em"] == 1.0
    assert set(report) >= {"windows_per_question", "tokens_per_question", "repairs", "unk_rate_context_tokens",
                           "unk_rate_answer_tokens", "answers_reachable"}


def test_report_cli_missing_data_gives_one_clear_message(tmp_path):
    out = run_module("extractive_qa.report", f"data.dir={tmp_path}", "data.archive_url=null", check=False)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert "hw7_dev.json" in out.stderr and "data.dir=" in out.stderr
