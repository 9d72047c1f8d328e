"""`make bench` runs end to end (tiny model, a few questions) and the feature cache is used."""

import json

import pytest

from extractive_qa.core.data import read_examples
from extractive_qa.core.features import encode_cached
from extractive_qa.core.windowing import WindowConfig

from helpers import needs_shared, run_module


@needs_shared
def test_bench_prints_json_lines_with_like_for_like_ratios(tmp_path):
    res = run_module("extractive_qa.bench", "model=tiny", "bench.eval_questions=3", "bench.repeats=1",
                     "bench.train_steps=1", "bench.train_questions=40", "bench.parts=[eval,budgets,train]",
                     "bench.budget_questions=4", "bench.eval_budgets=[512,4096]", "bench.isolate=false")
    lines = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    kinds = [line["bench"] for line in lines]
    assert kinds == ["hardware", "gemm_peak", "eval_naive", "eval", "eval", "eval_budget", "eval_budget", "train_naive",
                     "train", "summary"]
    hardware, gemm, naive, ours_seed, ours_default = lines[:5]
    assert hardware["device"] == "cpu" and hardware["precision"] in ("bf16", "no") and hardware["precision_reason"]
    assert hardware["torch_cpu_capability"] and hardware["threads"] >= 1
    assert gemm["gflops_fp32"] > 0 and "gflops_tf32" not in gemm  # TF32 is a CUDA peak
    # Like for like: the same questions, the same windows, so the same real tokens on both sides.
    assert naive["precision"] == "no" and naive["windows_preset"] == ours_seed["windows_preset"] == "seed"
    assert (naive["questions"], naive["windows"], naive["real_tokens"]) == (
        ours_seed["questions"], ours_seed["windows"], ours_seed["real_tokens"])
    assert ours_default["questions"] == naive["questions"] and ours_default["windows_preset"] == "default"
    for line in lines[2:-1]:
        assert line["peak_rss_mb"] > 0 and line.get("questions_per_s", line.get("windows_per_s")) > 0
    assert [line["eval_batch_tokens"] for line in lines[5:7]] == [512, 4096]
    summary = lines[-1]
    assert summary["eval_speedup_like_for_like"] == pytest.approx(ours_seed["tokens_per_s"] / naive["tokens_per_s"])
    assert summary["train_speedup_like_for_like"] == pytest.approx(lines[8]["tokens_per_s"] / lines[7]["tokens_per_s"])
    assert summary["default_windows_token_saving"] == pytest.approx(
        ours_seed["real_tokens_per_question"] / ours_default["real_tokens_per_question"]) and \
        summary["default_windows_token_saving"] > 1  # the default windows read fewer tokens per question
    assert summary["oracle_em_default_windows"] == 1.0
    assert 0 < summary["eval_mfu"] <= 1 and 0 < summary["train_mfu"] <= 1, summary  # a utilisation, never above 1
    assert summary["precision"] == hardware["precision"] and summary["mfu_peak"].startswith(
        "bf16 GEMM" if hardware["precision"] == "bf16" else "fp32 GEMM")


def _lists(rows) -> list:
    return [list(map(int, r)) for r in rows]


def test_model_flops_match_torch_flop_counter():
    """The MFU numerator, T * (2N + 4*L*d*T) per window, against torch's own FLOP counter on bert-base's shape
    (random weights): within 1% (the formula also counts LayerNorm and bias parameters as matmul weights)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForQuestionAnswering

    from extractive_qa.benchmarks.common import forward_flops

    model = BertForQuestionAnswering(BertConfig(attn_implementation="eager")).eval()
    for length in (64, 384):
        ids = torch.randint(1000, 20000, (1, length))
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        counted = counter.get_total_flops()
        assert forward_flops(model, [length]) == pytest.approx(counted, rel=0.01), (length, counted)


def test_feature_cache_tokenizes_once(tmp_path, char_tokenizer, monkeypatch):
    from helpers import hw7_file, hw7_question

    path = hw7_file(tmp_path / "d.json", ["台北是城市。"], [hw7_question(1, 0, "哪裡？", "台北", 0)])
    examples = read_examples(path)
    window = WindowConfig()
    first = encode_cached(examples, char_tokenizer, window, tmp_path / "cache")
    cached = [p for p in (tmp_path / "cache" / "features").iterdir() if (p / "features.json").is_file()]
    assert len(cached) == 1

    def fail(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr("extractive_qa.core.features.encode_examples", fail)
    second = encode_cached(examples, char_tokenizer, window, tmp_path / "cache")
    assert _lists(second.context_ids) == _lists(first.context_ids)
    assert _lists(second.question_ids) == _lists(first.question_ids)
    assert second.examples[0] is examples.examples[0]
    assert second.answer_token_span(0) == first.answer_token_span(0) is not None
    # Another question length is another key (and would tokenize again), and so is training's lean encoding.
    with pytest.raises(AssertionError, match="tokenized again"):
        encode_cached(examples, char_tokenizer, WindowConfig(max_question_len=8), tmp_path / "cache")
    with pytest.raises(AssertionError, match="tokenized again"):
        encode_cached(examples, char_tokenizer, window, tmp_path / "cache", offsets=False)
    monkeypatch.undo()
    encode_cached(examples, char_tokenizer, window, tmp_path / "cache", offsets=False)
    (lean,) = [p for p in (tmp_path / "cache" / "features").iterdir() if p.is_dir() and p != cached[0]]
    assert not (lean / "context_offsets.npy").exists() and (cached[0] / "context_offsets.npy").is_file()
    monkeypatch.setattr("extractive_qa.core.features.encode_examples", fail)
    again = encode_cached(examples, char_tokenizer, window, tmp_path / "cache", offsets=False)
    assert again.context_offsets is None and again.answer_token_span(0) == first.answer_token_span(0)


def test_gpu_check_runs_end_to_end_and_writes_its_json(tmp_path):
    """``make gpu-check --quick`` on this machine: the script a GPU machine runs, with tiny sizes (its numbers
    mean nothing here; the GPU tests skip). Also the bench's profile part: shares of a step that add up."""
    res = run_module("extractive_qa.gpu_check", "--quick", "--steps", "2", "--batch-size", "2", "--seq-len", "64",
                     "--out", str(tmp_path))
    written = sorted(tmp_path.glob("gpu_check_*.json"))
    assert res.stdout.strip().splitlines()[-1] == str(written[-1]) and len(written) == 1
    result = json.loads(written[0].read_text())
    tests = result["tests"]
    # No GPU here: every GPU test is skipped, and the check says so -- "not run", never "passed".
    assert tests["tests"] >= 8 and tests["skipped"] == tests["tests"] and tests["ran"] == 0
    assert tests["verdict"].startswith("not run: no CUDA GPU") and res.returncode == 0
    rows = result["bench_auto"]
    assert "error" not in [r["bench"] for r in rows]
    # HF's Trainer and ours evaluate the same questions, and the summary holds their ratio.
    peer = {r["side"]: r for r in rows if r["bench"] == "peer_eval"}
    assert set(peer) == {"hf_trainer", "ours"} and peer["ours"]["questions"] == peer["hf_trainer"]["questions"]
    assert [r for r in rows if r["bench"] == "summary"][0]["eval_vs_hf_trainer"] > 0
    profiles = [r for r in rows if r["bench"] == "profile"]
    assert [p["phase"] for p in profiles] == ["train_step", "eval_batch"]
    for p in profiles:
        assert p["ms"] > 0 and abs(sum(p["shares"].values()) - 1) < 0.02, p
        assert p["shares"]["gemm"] > 0
    assert result["throughput"]["tokens_per_s"] > 0 and result["throughput"]["steps"] == 2
    assert not list(tmp_path.glob("work_*")), "the synthetic inputs live in a temporary folder"


def test_gpu_check_never_counts_missing_tests_as_a_pass():
    from extractive_qa.gpu_check import tests_verdict

    assert not tests_verdict(5, {}, cuda=True, quick=False)["ok"]  # pytest exit 5: no tests collected
    assert not tests_verdict(5, {"tests": 0}, cuda=False, quick=True)["ok"]
    assert not tests_verdict(0, {"tests": 9, "skipped": 9}, cuda=True, quick=False)["ok"]  # all skipped on a GPU
    assert not tests_verdict(1, {"tests": 9, "skipped": 0, "failures": 1}, cuda=True, quick=False)["ok"]
    assert tests_verdict(0, {"tests": 9, "skipped": 0}, cuda=True, quick=False) == {
        "ran": 9, "verdict": "passed: 9 GPU tests", "ok": True}
    assert not tests_verdict(0, {"tests": 9, "skipped": 9}, cuda=False, quick=False)["ok"]  # a CPU is not a GPU
