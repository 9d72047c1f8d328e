"""The users' first real run, without the internet: the default `make train` fetches `bert-base-chinese` from a
hub mirror on a local port (HF_ENDPOINT) and the course zip from its URL, trains and writes every test id;
then the command it runs (``python -m extractive_qa.train``) runs from the caches with the mirror gone; through
a proxy; offline; and pinned to a commit."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from extractive_qa.core.data import read_examples

from helpers import HW7_DIR, OFFLINE_MODEL, ROOT, run_module
from helpers.hub import HubServer

ZIP = "ml2023spring-hw7.zip"  # the course archive's name: hw7_{train,dev,test}.json at its top level


def _checkpoint(folder: Path, synthetic: dict) -> Path:
    """A bert-base-chinese-shaped checkpoint, the way the hub's is: masked-LM weights (no QA head), the real
    tokenizer files from ../shared (the synthetic vocabulary without it) -- and tiny."""
    from transformers import BertConfig, BertForMaskedLM

    vocab_dir = OFFLINE_MODEL if (OFFLINE_MODEL / "vocab.txt").is_file() else synthetic["model"]
    folder.mkdir(parents=True)
    for name in ("vocab.txt", "tokenizer_config.json"):
        shutil.copy(vocab_dir / name, folder / name)
    config = BertConfig.from_pretrained(vocab_dir, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=64)
    config.architectures = ["BertForMaskedLM"]
    BertForMaskedLM(config).save_pretrained(folder)
    return folder


def _course_zip(synthetic: dict) -> bytes:
    data = HW7_DIR if HW7_DIR.is_dir() else synthetic["data"]
    import io

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for split in ("train", "dev", "test"):
            zf.write(data / f"hw7_{split}.json", f"hw7_{split}.json")
    return buf.getvalue()


@pytest.fixture(scope="module")
def mirror(synthetic, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mirror")
    hub = HubServer().start()
    commit = hub.publish_folder("bert-base-chinese", _checkpoint(tmp / "checkpoint", synthetic))
    hub.files[ZIP] = _course_zip(synthetic)
    yield {"hub": hub, "commit": commit, "tmp": tmp}
    hub.stop()


def _overrides(tmp: Path, args: tuple[str, ...]) -> list[str]:
    """The default config, only sizes (and where files go) overridden."""
    return [f"paths.output_dir={tmp}/outputs", f"paths.cache_dir={tmp}/cache", f"tracking.uri=sqlite:///{tmp}/mlflow.db",
            "data.limit_train=48", "data.limit_dev=24", "epochs=1", "max_steps=3", "batch_size=8",
            "tracking.system_metrics=false", *args]


def make_train(tmp: Path, hf_home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`make train` as a user types it, in a fresh interpreter."""
    full_env = {**os.environ, "HF_HOME": str(hf_home), "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(["make", "-s", "train", f"ARGS={' '.join(_overrides(tmp, args))}"], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=900)


def train(tmp: Path, hf_home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """What `make train` runs, ``python -m extractive_qa.train``, forked from the tests' warm interpreter that has
    not imported transformers or huggingface_hub (they read HF_HOME, HF_ENDPOINT and proxies when imported:
    tests/helpers/warm.py) -- for the runs after a test's first."""
    return run_module("extractive_qa.train", *_overrides(tmp, args), env={"HF_HOME": str(hf_home), **(env or {})},
                      check=False)


def test_the_default_run_through_a_mirror_then_from_the_caches(mirror):
    hub, tmp = mirror["hub"], mirror["tmp"]
    hf_home = tmp / "hf"
    first = make_train(tmp / "a", hf_home, f"data.archive_url={hub.url}/files/{ZIP}", f"hydra.run.dir={tmp}/a/run",
                       env={"HF_ENDPOINT": hub.url})
    assert first.returncode == 0, first.stderr[-3000:]
    asked = {path for _, path in hub.requests}
    assert f"/files/{ZIP}" in asked  # the course data, downloaded and unpacked
    # main's config names the commit; the tokenizer and the weights are then fetched at that commit
    assert "/bert-base-chinese/resolve/main/config.json" in asked
    assert {f"/bert-base-chinese/resolve/{mirror['commit']}/{f}" for f in ("vocab.txt", "model.safetensors")} <= asked
    run = tmp / "a" / "run"
    test_ids = [ex.id for ex in read_examples(tmp / "a" / "cache" / "data" / "hw7" / "hw7_test.json")]
    with open(run / "test_predictions.csv", newline="", encoding="utf-8") as f:
        assert [row["ID"] for row in csv.DictReader(f)] == test_ids  # every test id, once, in file order
    assert json.loads((run / "run.json").read_text())["model"] == {"name_or_path": "bert-base-chinese",
                                                                   "commit": mirror["commit"]}
    assert f"commit: {mirror['commit']}" in (run / "config_resolved.yaml").read_text()
    from mlflow.tracking import MlflowClient

    (logged,) = MlflowClient(f"sqlite:///{tmp}/a/mlflow.db").search_runs(["1"])
    assert logged.data.params["model.commit"] == mirror["commit"]

    # The mirror goes away: the same command runs from the caches, at once (no retries), and says so.
    hub.stop()
    try:
        # (The reruns check the caches, not the submission again: 20 test questions each.)
        again = train(tmp / "a", hf_home, f"data.archive_url={hub.url}/files/{ZIP}", f"hydra.run.dir={tmp}/a/run2",
                      "data.limit_test=20", env={"HF_ENDPOINT": hub.url})
        log = again.stdout + again.stderr
        assert again.returncode == 0, log[-3000:]
        assert "cannot be reached" in log and "from the Hugging Face cache" in log and "Retrying" not in log
        assert json.loads((tmp / "a" / "run2" / "run.json").read_text())["model"]["commit"] == mirror["commit"]
        offline = train(tmp / "a", hf_home, f"hydra.run.dir={tmp}/a/run3", "data.limit_test=20",
                        env={"HF_HUB_OFFLINE": "1"})
        assert offline.returncode == 0, offline.stderr[-3000:]  # HF_HUB_OFFLINE=1 with the model cached

        # No cache and no mirror: one message, naming HF_ENDPOINT and the offline preset, no traceback.
        down = train(tmp / "b", tmp / "empty-hf", f"data.archive_url={hub.url}/files/{ZIP}",
                     f"hydra.run.dir={tmp}/b/run", env={"HF_ENDPOINT": hub.url})
        assert down.returncode == 2 and "Traceback" not in down.stderr
        assert f"the hub at {hub.url} (HF_ENDPOINT) cannot be reached" in down.stderr
        assert "experiment=offline_smoke" in down.stderr
    finally:
        hub.start(hub.port)


def test_a_mirror_behind_a_proxy_is_reached_through_the_proxy(mirror):
    """HF_ENDPOINT names a host this machine cannot even resolve; HTTP_PROXY is the only way there."""
    hub, tmp = mirror["hub"], mirror["tmp"]
    before = len(hub.requests)
    res = train(tmp / "p", tmp / "proxy-hf", f"data.archive_url={hub.url}/files/{ZIP}", "data.limit_test=20",
                f"hydra.run.dir={tmp}/p/run",
                env={"HF_ENDPOINT": "http://hub.mirror.invalid", "HTTP_PROXY": hub.url, "http_proxy": hub.url,
                     "NO_PROXY": "", "no_proxy": ""})
    assert res.returncode == 0, res.stderr[-3000:]
    assert (f"/bert-base-chinese/resolve/{mirror['commit']}/model.safetensors") in {p for _, p in hub.requests[before:]}


def test_a_pinned_revision_loads_those_weights_after_main_moved(mirror, synthetic):
    hub, tmp = mirror["hub"], mirror["tmp"]
    newer = hub.publish_folder("bert-base-chinese", _checkpoint(tmp / "checkpoint-v2", synthetic))
    assert newer != mirror["commit"]
    common = [f"data.archive_url={hub.url}/files/{ZIP}", "data.limit_test=20"]
    latest = train(tmp / "r", tmp / "r-hf", *common, f"hydra.run.dir={tmp}/r/latest", env={"HF_ENDPOINT": hub.url})
    pinned = train(tmp / "r", tmp / "r-hf", *common, f"model.revision={mirror['commit']}",
                   f"hydra.run.dir={tmp}/r/pinned", env={"HF_ENDPOINT": hub.url})
    assert latest.returncode == 0 and pinned.returncode == 0, (latest.stderr + pinned.stderr)[-3000:]
    commits = {name: json.loads((tmp / "r" / name / "run.json").read_text())["model"]["commit"]
               for name in ("latest", "pinned")}
    assert commits == {"latest": newer, "pinned": mirror["commit"]}
    weights = [(tmp / "r" / name / "best_model" / "model.safetensors").read_bytes() for name in ("latest", "pinned")]
    assert weights[0] != weights[1]  # other initial weights, another model


def test_the_reachability_check_goes_through_https_proxy(mirror, monkeypatch):
    """An https endpoint behind HTTPS_PROXY is asked for through the proxy (a CONNECT tunnel), never by opening
    port 443 of a host the user may not even be able to resolve."""
    from extractive_qa.engine.modeling import hub_unreachable

    hub = mirror["hub"]
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.mirror.invalid")
    monkeypatch.setenv("HTTPS_PROXY", hub.url)
    monkeypatch.setenv("https_proxy", hub.url)
    for key in ("NO_PROXY", "no_proxy", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    before = len(hub.requests)
    reason = hub_unreachable()
    assert ("CONNECT", "hub.mirror.invalid:443") in hub.requests[before:]
    assert reason is not None and "502" in reason  # this proxy refuses tunnels; the report says it was the proxy
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert hub_unreachable() is None  # a mirror on any port, plain http: reachable
