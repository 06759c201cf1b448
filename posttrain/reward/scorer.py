"""The reward-model scorer: `score(conversations) -> rewards`, used by evaluation and RL stages.

A reward model is a sequence-classification model with one output (what TRL's
RewardTrainer trains). Loading anything else as a reward model is one clear error, and
the `min_accuracy` gate refuses a reward model whose held-out accuracy is too low.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from posttrain.errors import StageError

Conversation = list[dict]


def not_a_reward_model(directory: Path) -> str | None:
    """Why `directory` is not a reward model, or None. Reads config.json only (cheap, for validation)."""
    config_file = Path(directory) / "config.json"
    if not config_file.is_file():
        return f"{directory}: not a model directory (no config.json); a reward model comes from a reward_model stage"
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or labels != 1:
        return (f"{directory}: not a reward model ({', '.join(architectures) or 'unknown architecture'}, {labels} labels); "
                "expected a sequence-classification model with one output, as a reward_model stage saves")
    return None


class RewardScorer:
    def __init__(self, model, tokenizer, batch_size: int = 32):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    @classmethod
    def from_directory(cls, directory: Path, batch_size: int = 32) -> RewardScorer:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        problem = not_a_reward_model(directory)
        if problem:
            raise StageError(problem)
        model = AutoModelForSequenceClassification.from_pretrained(directory, use_safetensors=True)
        return cls(model, AutoTokenizer.from_pretrained(directory), batch_size)

    @torch.no_grad()
    def score(self, conversations: list[Conversation]) -> list[float]:
        """One scalar reward per conversation (its last assistant turn, given the turns before)."""
        rewards: list[float] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(conversations), self.batch_size):
            batch = conversations[start: start + self.batch_size]
            ids = [self.tokenizer.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in batch]
            width = max(len(i) for i in ids)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([i + [pad] * (width - len(i)) for i in ids], device=device)
            attention = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids], device=device)
            logits = self.model(input_ids=input_ids, attention_mask=attention).logits
            rewards += logits[:, 0].float().tolist()
        return rewards


def reward_model_accuracy(stage_dir: Path) -> float | None:
    """The held-out pairwise accuracy a reward_model stage recorded, if any."""
    manifest = Path(stage_dir) / "stage.json"
    if not manifest.is_file():
        return None
    return json.loads(manifest.read_text()).get("metrics", {}).get("held_out_accuracy")


def gated_scorer(directory: Path, min_accuracy: float | None, who: str) -> RewardScorer:
    """Load a reward model for a consumer stage, refusing one below `min_accuracy`."""
    scorer = RewardScorer.from_directory(directory)
    if min_accuracy is not None:
        accuracy = reward_model_accuracy(Path(directory).parent)
        if accuracy is None:
            raise StageError(f"{who}: reward model {directory} has no recorded held-out accuracy; train it with a reward_model stage or drop min_reward_accuracy")
        if accuracy < min_accuracy:
            raise StageError(f"{who}: reward model {directory} has held-out accuracy {accuracy:.3f}, below min_reward_accuracy={min_accuracy}; "
                             "improve it (more data or steps) or lower the gate")
    return scorer
