"""The format-control suites: held-out questions that ask for the answer as JSON (`world_format`), and
held-out questions with instructions a program can check (`world_instructions`).

Rows are a pure function of the assistant world's tables (`posttrain.embedded.world`):
`world_format` wraps every third held-out skills question in one of a few JSON instructions;
`world_instructions` gives the next third one to three instructions each (JSON, bullets, length,
case, words, commas, paragraphs). The embedded model was never taught either, so its scores
there are expected to be low; the suites are what a real model's format control is measured with.
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


# -- the instruction-following suite (world_instructions) ----------------------------------------
# Held-out questions, each followed by one to three instructions a program can check
# (`posttrain.eval.instructions`). Each spec: the instruction text appended to the question, the
# instructions as the JSONL carries them, and a response that follows them all (the row's target),
# from the answer without its final period. `{word}` is a word of the question the answer must not use.
_AVOID = {"capital": "capital", "opposite": "opposite", "color": "color", "next_number": "number"}

INSTRUCTION_SPECS = [
    ('Answer in JSON with the key "answer".', [{"type": "json", "keys": ["answer"]}],
     lambda a: json.dumps({"answer": a})),
    ("Answer with exactly 2 bullet points: the answer, then a short note.", [{"type": "bullets", "count": 2}],
     lambda a: f"- {a}.\n- That is my answer."),
    ("Answer in at most 5 words.", [{"type": "max_words", "limit": 5}],
     lambda a: f"{a}."),
    ("Answer in at least 12 words.", [{"type": "min_words", "limit": 12}],
     lambda a: f"The answer to your question is {a}, and I am quite sure of it."),
    ("Answer in a single sentence.", [{"type": "max_sentences", "limit": 1}],
     lambda a: f"The answer is {a}."),
    ("Reply in lowercase letters only.", [{"type": "lowercase"}],
     lambda a: f"the answer is {a.lower()}."),
    ("Reply in capital letters only.", [{"type": "uppercase"}],
     lambda a: f"THE ANSWER IS {a.upper()}."),
    ('Do not use the word "{word}".', [{"type": "forbidden_words", "words": ["{word}"]}],
     lambda a: f"{a}."),
    ('End your reply with the exact phrase "Hope that helps."', [{"type": "ends_with", "phrase": "Hope that helps."}],
     lambda a: f"{a}. Hope that helps."),
    ('Begin your reply with "Answer:".', [{"type": "starts_with", "phrase": "Answer:"}],
     lambda a: f"Answer: {a}."),
    ('Use the word "answer" in your reply.', [{"type": "keywords", "words": ["answer"]}],
     lambda a: f"My answer is {a}."),
    ("Do not use any commas.", [{"type": "no_commas"}],
     lambda a: f"{a}."),
    ("Write exactly 2 paragraphs separated by a blank line: the answer, then one sentence about it.",
     [{"type": "paragraphs", "count": 2}],
     lambda a: f"{a}.\n\nThat is the answer I would give."),
    ("Reply in lowercase, in at most 4 words.", [{"type": "lowercase"}, {"type": "max_words", "limit": 4}],
     lambda a: f"{a.lower()}."),
    ('Answer in JSON with the keys "answer" and "confidence" (high or low).',
     [{"type": "json", "keys": ["answer", "confidence"]}],
     lambda a: json.dumps({"answer": a, "confidence": "high"})),
    ('Begin with "Answer:", end with "Done." and use at most 3 sentences.',
     [{"type": "starts_with", "phrase": "Answer:"}, {"type": "ends_with", "phrase": "Done."}, {"type": "max_sentences", "limit": 3}],
     lambda a: f"Answer: {a}. Done."),
    ("Give exactly 3 bullet points without any commas: the answer, how sure you are, and a closing note.",
     [{"type": "bullets", "count": 3}, {"type": "no_commas"}],
     lambda a: f"- {a}.\n- I am sure.\n- Hope that helps."),
]


def instruction_rows() -> list[dict]:
    """Rows of `world_instructions`: one held-out skills question in three (not those `world_format` asks
    in JSON), each with the next instruction spec in turn, so every spec is used about equally."""
    from posttrain.embedded import world

    questions = world.eval_rows("skills")[1::3]
    rows = []
    for i, row in enumerate(questions):
        text, instructions, respond = INSTRUCTION_SPECS[i % len(INSTRUCTION_SPECS)]
        word = _AVOID[row["kind"]]
        rows.append({
            "prompt": f"{row['prompt']} {text.format(word=word)}",
            "target": respond(row["target"].rstrip(".")),
            "instructions": [{k: [w.format(word=word) for w in v] if k == "words" else v for k, v in inst.items()}
                             for inst in instructions],
            "kind": row["kind"],
        })
    return rows
