"""The format-control suite: held-out questions that ask for the answer as JSON.

Rows are a pure function of the assistant world's tables (`posttrain.embedded.world`):
every third held-out skills question, wrapped in one of a few JSON instructions. The
embedded model was never taught JSON, so its scores here are expected to be near zero;
the suite is what a real model's format control is measured with.
"""

from __future__ import annotations

import json

# The key every instruction asks for; `json_has_key` checks for it.
ANSWER_KEY = "answer"

INSTRUCTIONS = [
    'Answer in JSON with key "answer": {question}',
    '{question} Reply only with a JSON object of the form {{"answer": "..."}}.',
    'Respond with JSON only, using the key "answer". {question}',
]


def format_rows() -> list[dict]:
    from posttrain.embedded import world

    questions = world.eval_rows("skills")[::3]  # one in three keeps the suite small; still every skill
    rows = []
    for i, row in enumerate(questions):
        answer = row["target"].rstrip(".")
        rows.append({
            "prompt": INSTRUCTIONS[i % len(INSTRUCTIONS)].format(question=row["prompt"]),
            "target": json.dumps({ANSWER_KEY: answer}),
            "json_key": ANSWER_KEY,
            "kind": row["kind"],
        })
    return rows
