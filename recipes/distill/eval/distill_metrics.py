"""lm-eval helper of distill_held_out.yaml: how close a model's answer is to the teacher's.

ROUGE-L F-measure (Google's rouge-score, as the self_instruct stage's novelty filter) between the
model's greedy answer to a held-out instruction and the answer the teacher wrote for it.
"""

from rouge_score import rouge_scorer

_SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def process_results(doc, results):
    return {"rouge_l": _SCORER.score(doc["answer"], results[0])["rougeL"].fmeasure}
