"""A synthetic Chinese QA set the tests generate: template sentences whose answers are names,
numbers and places, written in the hw7 format (so every reader, window and metric path is real)."""

from __future__ import annotations

import json
import random
from pathlib import Path

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
            values = {"name": name, "city": rng.choice(CITIES), "age": str(rng.randint(18, 99)), "job": rng.choice(JOBS),
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


def write_tiny_model_dir(directory: Path) -> Path:
    """A char-level tokenizer plus a 2-layer BERT config: ``model.init=random`` works fully offline."""
    from conftest import build_char_tokenizer
    from transformers import BertConfig

    tok = build_char_tokenizer(directory, extra_chars="".join(SURNAMES + "".join(GIVEN + CITIES + JOBS + FILLER)) + "住哪裡今多少歲工作誰是的朋友")
    BertConfig(vocab_size=len(tok), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=512, max_position_embeddings=512).save_pretrained(directory)
    return directory
