"""How likely each model of a finished recipes/distill.yaml run finds the teacher's answers.

    python recipes/distill/likelihood.py runs/distill

For base, seeds_only and student: the teacher's answers in bits per UTF-8 byte (lower: likelier), given the
chat-formatted instruction, on the rows the self_instruct stage held out (<run>/teach/held_out.jsonl, never
trained on) and, for reference, on the rows the student trained on (<run>/teach/data.jsonl).

Why a script beside the recipe's eval stage: the eval stage runs lm-eval `generate_until` tasks; a
`loglikelihood` task's samples are (log-likelihood, is-greedy) pairs, which its sample records do not
take yet. Bytes rather than tokens: every model here shares the embedded tokenizer, but a figure per byte
means the same for any tokenizer.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def answer_scores(model, tokenizer, rows: list[dict]) -> list[tuple[float, int]]:
    """(negative log-likelihood in nats, UTF-8 bytes) of each row's answer, given its chat-formatted instruction."""
    context_limit = tokenizer.model_max_length
    scores = []
    for row in rows:
        question, answer = row["messages"][0], row["messages"][1]["content"]
        context = tokenizer.apply_chat_template([question], tokenize=False, add_generation_prompt=True)
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([(context_ids + answer_ids)[-context_limit:]])  # too long: the answer is kept whole when it fits
        scored = min(len(answer_ids), ids.shape[1] - 1)
        with torch.no_grad():
            logprobs = torch.log_softmax(model(ids).logits[0, :-1].float(), dim=-1)
        targets = ids[0, 1:]
        scores.append((-logprobs[torch.arange(len(targets)), targets][-scored:].sum().item(), len(answer.encode("utf-8"))))
    return scores


def bits_per_byte(scores: list[tuple[float, int]]) -> float:
    return sum(n for n, _ in scores) / sum(b for _, b in scores) / math.log(2)


def main(run: Path) -> None:
    rows = {name: [json.loads(line) for line in (run / "teach" / f"{name}.jsonl").read_text().splitlines()] for name in ("held_out", "data")}
    models = {"base": next((run / ".builtin").iterdir()), "seeds_only": run / "seeds_only" / "model", "student": run / "student" / "model"}
    print(f"teacher's answers, bits per byte ({len(rows['held_out'])} held-out rows, {len(rows['data'])} trained rows)")
    held_out = {}
    for name, directory in models.items():
        tokenizer = AutoTokenizer.from_pretrained(directory)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
        held_out[name] = answer_scores(model, tokenizer, rows["held_out"])
        print(f"  {name:<11} held out {bits_per_byte(held_out[name]):.3f}   trained on {bits_per_byte(answer_scores(model, tokenizer, rows['data'])):.3f}")
    wins = sum(s[0] < c[0] for s, c in zip(held_out["student"], held_out["seeds_only"]))
    print(f"  student likelier than seeds_only on {wins} of {len(rows['held_out'])} held-out answers")

if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/distill"))
