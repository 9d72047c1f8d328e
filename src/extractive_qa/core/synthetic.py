"""A synthetic Chinese QA set generated on the fly: template sentences whose answers are names,
numbers and places, written in the hw7 format (so every reader, window and metric path is real)."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
    if len(tok) != len(dict.fromkeys(vocab)):
        raise RuntimeError(f"{directory}: the vocabulary did not load ({len(tok)} tokens)")
    return tok



SURNAMES = "王李張劉陳楊黃趙周吳"
GIVEN = ["小明", "大偉", "美華", "志強", "國華", "建國", "文傑", "家豪", "雅婷", "淑芬"]
CITIES = ["台北", "上海", "廣州", "深圳", "杭州", "北京", "南京", "西安"]
JOBS = ["工廠", "學校", "醫院", "銀行", "公司", "商店"]
FILLER = ["天氣很好。", "大家都很開心。", "這是一個故事。", "時間過得很快。", "我們去看看。"]
QUESTIONS = {  # kind -> (question, the sentence that answers it)
    "city": ("{name}住在哪裡？", "{name}住在{city}。"),
    "age": ("{name}今年多少歲？", "{name}今年{age}歲。"),
    "job": ("{name}在哪裡工作？", "{name}在{job}工作。"),
    "friend": ("誰是{name}的朋友？", "{name}的朋友是{friend}。"),
}


def make_split(n_paragraphs: int, seed: int, people_per_paragraph: int = 1, with_answers: bool = True) -> dict:
    rng = random.Random(seed)
    paragraphs, questions = [], []
    for pid in range(n_paragraphs):
        names = rng.sample([s + g for s in SURNAMES for g in GIVEN], people_per_paragraph + 1)
        facts = []
        for name in names[:-1]:
            values = {"name": name, "city": rng.choice(CITIES), "age": str(rng.randint(18, 99)),
                      "job": rng.choice(JOBS),
                      "friend": names[-1]}
            for kind, (_, sentence) in QUESTIONS.items():
                facts.append((name, kind, values[kind], sentence.format(**values)))
        rng.shuffle(facts)
        text = ""
        spans = []
        for name, kind, answer, sentence in facts:
            if rng.random() < 0.4:
                text += rng.choice(FILLER)
            start = len(text) + sentence.rindex(answer)
            spans.append((name, kind, answer, start))
            text += sentence
        paragraphs.append(text)
        for name, kind, answer, start in rng.sample(spans, 3):
            q = {"id": len(questions), "paragraph_id": pid, "question_text": QUESTIONS[kind][0].format(name=name),
                 "answer_text": answer if with_answers else None,
                 "answer_start": start if with_answers else None,
                 "answer_end": start + len(answer) - 1 if with_answers else None}
            questions.append(q)
    return {"questions": questions, "paragraphs": paragraphs}


def write_synthetic_hw7(directory: Path, n_train: int = 600, n_dev: int = 60, n_test: int = 40) -> Path:
    """hw7_train/dev/test.json under ``directory`` (3 questions per paragraph)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, n, seed, answers in (("train", n_train, 1, True), ("dev", n_dev, 2, True), ("test", n_test, 3, False)):
        (directory / f"hw7_{name}.json").write_text(json.dumps(make_split(n, seed, with_answers=answers),
                                                               ensure_ascii=False), encoding="utf-8")
    return directory


def write_tiny_model_dir(directory: Path, extra_chars: str = "") -> Path:
    """A char-level tokenizer plus a 2-layer BERT config: ``model.init=random`` works fully offline.
    ``extra_chars`` widen the vocabulary (another tokenizer, for tests that need one)."""
    from transformers import BertConfig

    tok = build_char_tokenizer(directory, extra_chars="".join(SURNAMES + "".join(GIVEN + CITIES + JOBS + FILLER))
                               + "住哪裡今多少歲工作誰是的朋友" + extra_chars)
    BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=512, max_position_embeddings=512).save_pretrained(directory)
    return directory
