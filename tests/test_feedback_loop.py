"""The loop closes: judgements captured through `posttrain serve` become the next round's data, the next
round retrains only what that data feeds (alignment, then evaluation), and the judged answers move.
Iterative DPO on the embedded world: the reward model's score of the policy's own answers rises round
over round with bounded KL, and a run that lost its last round resumes to the same weights."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import call_api, run_cli, serve_process

# Questions people ask the served model, and the answer each of them writes instead of the model's.
CORRECTIONS = {
    "What is the capital of France?": "The answer is Paris.",
    "What is the capital of Italy?": "The answer is Rome.",
    "What is the capital of Spain?": "The answer is Madrid.",
    "Name the capital city of Germany.": "The answer is Berlin.",
    "Tell me the capital of Japan.": "The answer is Tokyo.",
    "Which city is the capital of Egypt?": "The answer is Cairo.",
}


def _log_prob(model_dir, question: str, answer: str) -> float:
    """log p(answer | question) under the model in `model_dir`, through its own chat template."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=True, add_generation_prompt=True,
                                           return_dict=True)["input_ids"]
    full = tokenizer.apply_chat_template([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                                         tokenize=True, return_dict=True)["input_ids"]
    assert full[:len(prompt)] == prompt
    with torch.no_grad():
        logits = model(torch.tensor([full])).logits[0, :-1].float()
    targets = torch.tensor(full[1:])
    token_lp = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return token_lp[len(prompt) - 1:].sum().item()


@pytest.mark.slow
def test_feedback_captured_by_the_server_retrains_only_alignment_and_moves_the_judged_answers(chat_run, tmp_path):
    round1, _ = chat_run
    store = tmp_path / "feedback.sqlite"
    judged = {}  # question -> the served model's answer, which the person replaced
    with serve_process(str(round1), "--models", "align", "--port", "0", "--feedback", str(store), "--temperature", "0") as (_, url):
        for question, correction in CORRECTIONS.items():
            status, answer = call_api(url, "/api/chat", {"model": "align", "messages": [{"role": "user", "content": question}]})
            assert status == 200, answer
            judged[question] = answer["text"]
            status, stored = call_api(url, "/api/feedback", {"kind": "edit", "answer_id": answer["answer_id"], "correction": correction})
            assert status == 200 and stored["new"], stored
    assert all(judged[q] != c for q, c in CORRECTIONS.items())  # each edit replaced a different answer

    # Round 2: the same recipe, its alignment data now the feedback log and the captured judgements.
    round2 = tmp_path / "round2"
    result = run_cli("run", "recipes/chat.yaml", "--output", str(round2), "--reuse", str(round1), "--quiet",
                     "--set", f"stages.align.dpo.data=[builtin:assistant_world/feedback, {store}]")
    assert result.returncode in (0, 3), result.stderr[-3000:]  # 3: the public profile's gates judge the build
    assert f"sft (sft): reused from {round1}" in result.stderr and f"rm (reward_model): reused from {round1}" in result.stderr
    for stage in ("align", "eval"):
        manifest = json.loads((round2 / stage / "stage.json").read_text())
        assert manifest["status"] == "completed" and "reused_from" not in manifest
    assert json.loads((round2 / "sft" / "stage.json").read_text())["reused_from"] == str(round1)
    # Round 1's evaluation cache came along: base and sft (unchanged) were not evaluated again.
    assert json.loads((round2 / "eval" / "stage.json").read_text())["metrics"]["models_from_cache"] == 2
    data = json.loads((round2 / "align" / "stage.json").read_text())["data"]
    from_store = data["details"]["sources"][str(store)]
    assert from_store["rows_read"] == 2 * len(CORRECTIONS) and from_store["examples"] == len(CORRECTIONS)  # one pair per edit

    # The judged answers moved: the replaced answer is less likely, the person's answer more, on every question.
    moved = {q: (_log_prob(round2 / "align" / "model", q, judged[q]) - _log_prob(round1 / "align" / "model", q, judged[q]),
                 _log_prob(round2 / "align" / "model", q, c) - _log_prob(round1 / "align" / "model", q, c))
             for q, c in CORRECTIONS.items()}
    print(f"log-prob change, round 2 - round 1 (replaced answer, person's answer): {moved}")  # shown with -s
    assert all(disliked < 0 < preferred for disliked, preferred in moved.values()), moved
    assert sum(p for _, p in moved.values()) / len(moved) > 2.0, moved  # nats; measured in docs/feedback-loop.md

    # Round N against round N-1, side by side.
    compared = run_cli("compare", str(round1), str(round2), "--output", str(tmp_path / "compare"))
    assert compared.returncode == 0, compared.stderr
    models = json.loads((tmp_path / "compare" / "results.json").read_text())["evaluation"]["models"]
    assert {"run/align", "round2/align"} <= set(models)


@pytest.mark.slow
def test_iterative_dpo_raises_the_reward_round_over_round_with_bounded_kl_and_resumes_exactly(chat_run, tmp_path):
    round1, _ = chat_run
    out = tmp_path / "iterative"
    args = ("run", "recipes/chat.yaml", "--output", str(out), "--quiet", "--set", "choices.alignment=iterative_dpo")
    result = run_cli(*args, "--reuse", str(round1))
    assert result.returncode in (0, 3), result.stderr[-3000:]
    assert "sft (sft): reused from" in result.stderr and "rm (reward_model): reused from" in result.stderr
    align = json.loads((out / "align" / "stage.json").read_text())
    assert align["kind"] == "iterative_dpo"
    reward = [v for _, v in align["curves"]["reward"]]
    kl = [v for _, v in align["curves"]["kl"]]
    assert len(reward) == len(kl) == 4  # round 0 (the parent) to round 3
    assert abs(kl[0]) < 1e-4  # round 0's answers come from the parent itself
    # Measured -0.11, 1.63, 2.51, 2.53 and KL 0, 0.63, 1.17, 1.73 nats (docs/feedback-loop.md).
    assert all(later > earlier - 0.2 for earlier, later in zip(reward, reward[1:])), reward
    assert reward[-1] > reward[0] + 1.5, reward
    assert all(math.isfinite(v) and v < 3.0 for v in kl), kl
    assert all(p > 20 for _, p in align["curves"]["pairs"])  # of 64 prompts a round; measured 46 to 48
    evaluation = json.loads((out / "eval" / "stage.json").read_text())["evaluation"]["models"]
    assert evaluation["align"]["reward_model"]["mean_reward"] > evaluation["sft"]["reward_model"]["mean_reward"] + 1.0

    # Lose the last round and the stage's model: the same command redoes only round 3, to the same weights.
    finished = load_file(out / "align" / "model" / "model.safetensors")
    shutil.rmtree(out / "align" / "rounds" / "round-3")
    shutil.rmtree(out / "align" / "model")
    again = run_cli(*args)
    assert again.returncode in (0, 3), again.stderr[-3000:]
    assert "round 1: done earlier" in again.stderr and "round 2: done earlier" in again.stderr
    assert "round 3: reward" in again.stderr
    resumed = load_file(out / "align" / "model" / "model.safetensors")
    assert resumed.keys() == finished.keys()
    assert all(torch.allclose(resumed[k], finished[k], atol=1e-6) for k in finished)
