"""The model over windows, in-process: token-budget batches give each window the logits it gets alone."""

import numpy as np
import pytest
import torch

from extractive_qa.core.postprocess import PostprocessSettings
from extractive_qa.core.windowing import WindowConfig, encode_examples, eval_windows
from extractive_qa.engine.evaluation import model_inputs, predict, window_logits
from extractive_qa.engine.modeling import load_qa_model


@pytest.fixture(scope="module")
def tiny(synthetic):
    from transformers import AutoTokenizer

    from extractive_qa.core.data import read_examples

    torch.manual_seed(0)
    model = load_qa_model(synthetic["model"], init="random").eval()
    tokenizer = AutoTokenizer.from_pretrained(synthetic["model"])
    window = WindowConfig(max_seq_len=96, max_question_len=16, doc_overlap=24)
    enc = encode_examples(read_examples(synthetic["data"] / "hw7_dev.json").examples[:20], tokenizer, window)
    return model, enc, eval_windows(enc, window)


def test_batched_logits_equal_each_window_alone(tiny):
    model, enc, windows = tiny
    starts, ends = window_logits(model, enc, windows, batch_tokens=512)
    lengths = [enc.sequence_length(int(i), int(c)) for i, c in zip(windows.example_index, windows.context_len,
                                                                   strict=True)]
    assert [len(s) for s in starts] == lengths and [len(e) for e in ends] == lengths
    from extractive_qa.engine.batching import PadCollator, WindowDataset

    data = WindowDataset(enc, windows, with_labels=False)
    with torch.inference_mode():
        for w in (0, len(windows) // 2, len(windows) - 1):
            alone = model(**model_inputs(PadCollator(enc.pad_id, multiple_of=1)([data[w]])))
            np.testing.assert_allclose(alone.start_logits[0].numpy(), starts[w], atol=1e-4)
            np.testing.assert_allclose(alone.end_logits[0].numpy(), ends[w], atol=1e-4)


def test_predict_gives_one_answer_per_question_whatever_the_budget(tiny):
    model, enc, windows = tiny
    a = predict(model, enc, windows, PostprocessSettings(), batch_tokens=256)
    b = predict(model, enc, windows, PostprocessSettings(), batch_tokens=4096)
    assert [p.id for p in a] == [ex.id for ex in enc.examples]
    assert [p.text for p in a] == [p.text for p in b]
    assert not model.training  # evaluation leaves the model as it found it (eval here)
