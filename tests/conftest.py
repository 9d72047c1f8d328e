"""Shared fixtures: paths to ../shared (skipping when absent) and a tokenizer built offline."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EXTRACTIVE_QA_SHARED", ROOT.parent / "shared")).resolve()
OFFLINE_MODEL = SHARED / "models" / "bert-base-chinese-offline"
HW7_DIR = SHARED / "data" / "hw7-drcd"
SQUAD_DIR = SHARED / "data" / "squad-format"

needs_shared = pytest.mark.skipif(
    not (OFFLINE_MODEL / "vocab.txt").is_file() or not HW7_DIR.is_dir(),
    reason=f"needs ../shared (real data + offline tokenizer) at {SHARED}",
)

# Characters of the synthetic QA set plus what the post-processing tests need.
_SYNTH_CHARS = (
    "的是在了和有人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后"
    "多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它"
    "合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变"
    "条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头"
    "基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即"
    "保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带"
    "安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研"
    "界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便"
    "团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识"
    "适属圆包火住调满县局照参红细引听该铁价严龙李小明红张伟台北上海广州深圳杭州年月日元号问答什么哪里谁多少"
    "，。？！、：；（）《》“”"
)


def build_char_tokenizer(directory: Path, extra_chars: str = ""):
    """A BERT WordPiece tokenizer over single characters, English words and digit pieces, built offline."""
    from transformers import AutoTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = sorted(set(_SYNTH_CHARS + extra_chars))
    words = ["hello", "world", "bert", "google", "the", "of", "##s", "##ing"]
    digits = [str(d) for d in range(10)] + [f"##{d}" for d in range(10)] + ["20", "##20", "19", "##19"]
    vocab = specials + chars + words + digits
    (directory / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "BertTokenizer", "do_lower_case": False, "tokenize_chinese_chars": True}), encoding="utf-8")
    tok = AutoTokenizer.from_pretrained(directory)
    assert len(tok) == len(dict.fromkeys(vocab)), "the vocabulary did not load"
    return tok


@pytest.fixture(scope="session")
def char_tokenizer(tmp_path_factory):
    return build_char_tokenizer(tmp_path_factory.mktemp("char_tokenizer"))


@pytest.fixture(scope="session")
def bert_tokenizer():
    if not (OFFLINE_MODEL / "vocab.txt").is_file():
        pytest.skip(f"needs the offline bert-base-chinese tokenizer at {OFFLINE_MODEL}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(OFFLINE_MODEL))


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    return path


def hw7_file(path: Path, paragraphs: list[str], questions: list[dict]) -> Path:
    return write_json(path, {"questions": questions, "paragraphs": paragraphs})


def hw7_question(qid, pid, question, answer=None, start=None, end=None) -> dict:
    if answer is not None and end is None and start is not None:
        end = start + len(answer) - 1
    return {"id": qid, "paragraph_id": pid, "question_text": question, "answer_text": answer,
            "answer_start": start, "answer_end": end}
