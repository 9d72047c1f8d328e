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


def test_lengths_bucketed_to_64_give_the_logits_of_unpadded_windows(tiny):
    """With compile, batches are padded to multiples of 64 tokens (a few shapes to compile): the padding is masked,
    so every window's logits are those it gets alone, unpadded."""
    model, enc, windows = tiny
    from extractive_qa.engine.batching import PadCollator, WindowDataset, pad_multiple

    assert pad_multiple("auto", compiled=True) == 64 and pad_multiple("auto", compiled=False) == 8
    bucketed = window_logits(model, enc, windows, batch_tokens=1024, pad_multiple=64)
    data = WindowDataset(enc, windows, with_labels=False)
    assert PadCollator(enc.pad_id, multiple_of=64)([data[0]])["input_ids"].shape[1] % 64 == 0
    with torch.inference_mode():
        for w in range(len(windows)):
            alone = model(**model_inputs(PadCollator(enc.pad_id, multiple_of=1)([data[w]])))
            np.testing.assert_allclose(alone.start_logits[0].numpy(), bucketed[0][w], atol=1e-4)
            np.testing.assert_allclose(alone.end_logits[0].numpy(), bucketed[1][w], atol=1e-4)


def test_attention_kernels_agree_and_evaluation_puts_the_training_kernel_back(tiny, monkeypatch):
    """On a CPU, training runs eager attention and evaluation SDPA (measured: engine/attention.py). Both kernels give
    the same logits; evaluation switches to its kernel and back, even when it ends with an error."""
    from extractive_qa.engine import evaluation
    from extractive_qa.engine.attention import attention_kernel, use_attention

    model, enc, windows = tiny
    assert attention_kernel("auto", "cpu", training=True) == "eager"
    assert attention_kernel("auto", "cpu", training=False) == "sdpa"
    assert attention_kernel("auto", "cuda", training=True) == "sdpa"
    assert attention_kernel("eager", "cuda", training=False) == "eager"
    with pytest.raises(ValueError, match="attention must be one of"):
        attention_kernel("flash", "cpu", training=True)
    use_attention(model, "sdpa")
    sdpa = window_logits(model, enc, windows, batch_tokens=1024, attention="sdpa")
    use_attention(model, "eager")
    seen = []
    forward = evaluation._forward

    def spy(m, batch, device):
        seen.append(m.config._attn_implementation)
        return forward(m, batch, device)

    monkeypatch.setattr(evaluation, "_forward", spy)
    eager_training = window_logits(model, enc, windows, batch_tokens=1024)  # auto: SDPA for evaluation
    assert set(seen) == {"sdpa"} and model.config._attn_implementation == "eager"
    for a, b in zip(sdpa[0] + sdpa[1], eager_training[0] + eager_training[1], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    eager = window_logits(model, enc, windows, batch_tokens=1024, attention="eager")
    for a, b in zip(sdpa[0], eager[0], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)

    def broken(m, batch, device):
        raise RuntimeError("boom")

    monkeypatch.setattr(evaluation, "_forward", broken)
    model.train()
    with pytest.raises(RuntimeError, match="boom"):
        window_logits(model, enc, windows, batch_tokens=1024)
    assert model.training and model.config._attn_implementation == "eager"
    model.eval()
    use_attention(model, "sdpa")


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_the_masks_model_inputs_gives_change_nothing(synthetic, kernel):
    """The 4D additive mask of a padded batch, and no mask for a batch without padding (model_inputs: no host read),
    give the logits transformers' own mask from the 2D one gives."""
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    from extractive_qa.engine.batching import PadCollator
    from extractive_qa.engine.evaluation import model_inputs

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(synthetic["model"], attn_implementation=kernel)
    model = AutoModelForQuestionAnswering.from_config(config).eval()
    items = [{"input_ids": list(range(5, 5 + n)), "index": i} for i, n in enumerate((12, 7, 16))]
    for batch in (PadCollator(0)([items[0], items[1]]), PadCollator(0)([items[2]])):
        theirs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        ours = model(**model_inputs(batch))
        assert ("attention_mask" in model_inputs(batch)) == (not batch["full_rows"].all())
        real = batch["attention_mask"].bool()
        for a, b in ((theirs.start_logits, ours.start_logits), (theirs.end_logits, ours.end_logits)):
            torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-5)
