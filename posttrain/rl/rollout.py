"""Rollouts for RL stages: sample responses, and read per-token log-probs, entropies and values.

Prompts are left-padded so every response starts at the same column; position ids are
computed from the attention mask so padding never shifts positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from posttrain.rl.ppo_math import response_mask


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [B, P + R] prompt (left-padded) then response
    attention_mask: torch.Tensor  # [B, P + R]
    prompt_length: int  # P
    response_ids: torch.Tensor  # [B, R]
    mask: torch.Tensor  # [B, R] response tokens that count (up to and including the first EOS)
    ended_with_eos: torch.Tensor  # [B] bool


def encode_prompts(tokenizer, prompts: list[list[dict]], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    rendered = [tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"][-max_length:] for p in prompts]
    width = max(len(r) for r in rendered)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rendered])
    attention = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rendered])
    return input_ids, attention


@torch.no_grad()
def sample(policy, tokenizer, prompts: list[list[dict]], max_prompt_length: int, max_new_tokens: int, temperature: float, top_p: float) -> Rollout:
    input_ids, attention = encode_prompts(tokenizer, prompts, max_prompt_length)
    device = next(policy.parameters()).device
    output = policy.generate(
        input_ids=input_ids.to(device), attention_mask=attention.to(device),
        do_sample=True, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    prompt_length = input_ids.shape[1]
    response = output[:, prompt_length:]
    if response.shape[1] < max_new_tokens:  # every sequence stopped early
        response = F.pad(response, (0, max_new_tokens - response.shape[1]), value=tokenizer.pad_token_id)
    mask = response_mask(response, tokenizer.eos_token_id, tokenizer.pad_token_id)
    ended = ((response == tokenizer.eos_token_id) & (mask > 0)).any(dim=1)
    full_ids = torch.cat([input_ids.to(device), response], dim=1)
    full_attention = torch.cat([attention.to(device), mask.long()], dim=1)
    return Rollout(full_ids, full_attention, prompt_length, response, mask, ended)


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.cumsum(dim=1) - 1).clamp(min=0)


def response_logprobs(model, rollout: Rollout, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probability and entropy of each response token under `model` ([B, R] each)."""
    logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                   position_ids=_positions(rollout.attention_mask)).logits
    logits = logits[:, rollout.prompt_length - 1: -1].float() / temperature
    log_probs = F.log_softmax(logits, dim=-1)
    token_logprobs = log_probs.gather(-1, rollout.response_ids.unsqueeze(-1)).squeeze(-1)
    entropy = -(log_probs.exp() * log_probs).sum(-1)
    return token_logprobs, entropy


def token_values(value_model, rollout: Rollout) -> torch.Tensor:
    """The critic's value of the state before each response token ([B, R]).

    A sequence-classification model scores every position before pooling the last one;
    the value head is that score read at every position.
    """
    model = value_model.get_base_model() if hasattr(value_model, "get_base_model") else value_model
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                      position_ids=_positions(rollout.attention_mask)).last_hidden_state
    values = model.score(hidden).squeeze(-1).float()
    return values[:, rollout.prompt_length - 1: -1]
