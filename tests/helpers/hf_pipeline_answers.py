"""Run inside an environment with transformers 4.x (the last with the extractive QA pipeline): answer the
questions of an hw7 file with `pipeline("question-answering")` over a run's best_model/, as JSON {id: answer}.
Nothing of this project is imported: the model dir must stand on its own."""

import json
import sys

from transformers import pipeline

model_dir, data_file = sys.argv[1], sys.argv[2]
data = json.load(open(data_file, encoding="utf-8"))
qa = pipeline("question-answering", model=model_dir, tokenizer=model_dir, device=-1)
answers = {}
for q in data["questions"]:
    out = qa(question=q["question_text"], context=data["paragraphs"][q["paragraph_id"]])
    answers[str(q["id"])] = out["answer"]
print(json.dumps(answers, ensure_ascii=False))
