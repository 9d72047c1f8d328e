"""Model folders of other families than BERT, built offline for tests: an XLM-RoBERTa-style SentencePiece
(Unigram) tokenizer trained with the ``tokenizers`` library, and an ELECTRA WordPiece tokenizer, each with
a tiny random-init config. ``model=<family yaml> model.init=random model.name_or_path=<folder>`` uses them
exactly as a hub checkpoint of that family would be used."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

TINY = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 512}


def xlm_roberta_dir(directory: Path, texts: Iterable[str], vocab_size: int = 6000, max_piece_length: int = 16) -> Path:
    """``<s> q </s></s> c </s>``, no token types: a Unigram tokenizer trained on ``texts`` (Metaspace
    pre-tokenizer, NFKC, as XLM-R's; pieces of at most ``max_piece_length`` characters) and a 2-layer XLM-R config."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaConfig, XLMRobertaTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    # Fewer, larger pruning rounds than the trainer's defaults (0.75, 2): training on the 431,000 characters of hw7's
    # paragraphs took 8.4 instead of 18.5 CPU-s here. The pieces still split every dev answer but 66 of 1,893 at
    # their ends (oracle EM 0.965; 55 with the defaults), and the tiny model learns as it did (test_model_families).
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>",
                                      max_piece_length=max_piece_length, shrinking_factor=0.5, n_sub_iterations=1)
    tok.train_from_iterator(list(texts), trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", bos), ("</s>", eos)])
    fast = XLMRobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")
    fast.save_pretrained(directory)
    XLMRobertaConfig(vocab_size=len(fast), max_position_embeddings=514, pad_token_id=fast.pad_token_id,
                     bos_token_id=bos,
                     eos_token_id=eos, type_vocab_size=1, **TINY).save_pretrained(directory)
    return directory


def electra_dir(directory: Path) -> Path:
    """``[CLS] q [SEP] c [SEP]`` with token types: the synthetic set's character vocabulary as an ELECTRA
    WordPiece tokenizer, and a 2-layer ELECTRA discriminator config (embeddings as wide as its layers, as in
    the base models)."""
    import json

    from transformers import AutoTokenizer, ElectraConfig

    from extractive_qa.core.synthetic import write_tiny_model_dir

    write_tiny_model_dir(directory)  # the synthetic vocabulary
    (directory / "config.json").unlink()
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "ElectraTokenizer", "do_lower_case": False, "tokenize_chinese_chars": True}),
        encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(directory)
    ElectraConfig(vocab_size=len(tok), embedding_size=TINY["hidden_size"], max_position_embeddings=512,
                  **TINY).save_pretrained(directory)
    return directory
