"""SFT's loss with the output head run on completion tokens only.

A causal LM's head (hidden -> vocabulary logits) is the largest single matmul of a small model's
step (SmolLM2: 49k x 576), and SFT's loss reads it only where the next token is a completion token.
TRL's fused head skips the other positions on CUDA/XPU only (Triton); elsewhere it scores every
position, prompt and padding included, and recomputes the logits in the backward pass. Here the
backbone's hidden states are gathered at the loss-bearing positions first, then projected and scored
in chunks of `chunk_tokens` rows; with more than one chunk each is recomputed in the backward pass
(torch.utils.checkpoint), so no more than one chunk's logits are alive at once. The loss is the
same mean next-token cross-entropy (`tests/test_completion_loss.py` checks loss and gradients
against the model's own loss).

Written here rather than taken from a library: TRL's kernel decides by device whether to compact,
and liger-kernel's fused linear cross-entropy is a Triton (GPU) kernel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_TOKENS = 2048
# Config fields of models whose logits are more than `hidden @ head` (soft-capping, scaling): not handled here.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


def supports(causal_lm) -> bool:
    """Whether `causal_lm`'s logits are its output embedding applied to its backbone's last hidden state."""
    config = causal_lm.config.get_text_config()
    head = causal_lm.get_output_embeddings()
    return (isinstance(head, torch.nn.Linear) and getattr(causal_lm, "base_model", None) is not None
            and causal_lm.base_model is not causal_lm and all(getattr(config, name, None) is None for name in _LOGIT_TRANSFORMS))


def _chunk(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy, how many targets are the arg-max) of one chunk of rows. The head runs in float32, as TRL's
    does: logits rounded to bf16 bias the loss."""
    with torch.autocast(hidden.device.type, enabled=False):
        logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    return F.cross_entropy(logits, targets, reduction="sum"), (logits.detach().argmax(-1) == targets).sum()


def completion_loss(causal_lm, inputs: dict, num_items_in_batch=None, chunk_tokens: int = CHUNK_TOKENS) -> tuple[torch.Tensor, dict]:
    """Mean next-token cross-entropy over the tokens whose label is not -100, and counts for the logs
    ({"tokens": loss-bearing tokens, "correct": of those, how many are the arg-max}).

    `causal_lm` is the unwrapped causal LM (a PEFT model's `get_base_model()`: its LoRA layers are in
    place); `inputs` a collated batch with `labels`; `num_items_in_batch` (the Trainer's count under
    gradient accumulation) divides the sum instead of this batch's count."""
    labels = inputs["labels"]
    model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = causal_lm.base_model(**model_inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != -100
    hidden = hidden[:, :-1][mask]  # (loss-bearing tokens, hidden size)
    targets = targets[mask]
    head = causal_lm.get_output_embeddings()
    total = hidden.new_zeros((), dtype=torch.float32)
    correct = 0
    starts = range(0, hidden.size(0), chunk_tokens)
    for start in starts:
        part, wanted = hidden[start:start + chunk_tokens], targets[start:start + chunk_tokens]
        if len(starts) > 1:  # bounded memory: this chunk's logits are recomputed in the backward pass
            summed, right = checkpoint(_chunk, part, head.weight, head.bias, wanted, use_reentrant=False)
        else:
            summed, right = _chunk(part, head.weight, head.bias, wanted)
        total = total + summed
        correct += int(right)
    count = int(mask.sum())
    divisor = num_items_in_batch if num_items_in_batch is not None else max(count, 1)
    loss = total / torch.as_tensor(divisor, device=total.device).clamp(min=1)
    if count == 0:
        loss = loss + hidden.sum() * 0  # stays connected to the model: a batch without loss-bearing tokens backpropagates zeros
    return loss, {"tokens": count, "correct": correct}


def sft_trainer_class():
    """TRL's SFTTrainer with `completion_loss` as its training loss where it computes the same thing; TRL's
    own path everywhere else (evaluation, label smoothing, a custom loss, MoE aux losses, DFT, distributed)."""
    from trl import SFTTrainer

    class CompletionHeadSFTTrainer(SFTTrainer):
        def _uses_completion_loss(self, model, inputs, return_outputs) -> bool:
            return (model.training and not return_outputs and self.compute_loss_func is None and self.label_smoother is None
                    and self.args.loss_type == "nll" and not self.aux_loss_enabled and "labels" in inputs
                    and self.accelerator.num_processes == 1 and self.accelerator.unwrap_model(model) is model
                    and not _compiled(model) and not _prompt_learning(model) and supports(_causal_lm(model)))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not self._uses_completion_loss(model, inputs, return_outputs):
                return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
            # The backbone is called directly, past the wrapper accelerate puts around the model's forward: its autocast here.
            with self.accelerator.autocast():
                loss, counts = completion_loss(_causal_lm(model), inputs, num_items_in_batch)
            # The logs TRL's loss path writes, but entropy (it would cost another pass over the logits).
            if counts["tokens"]:
                self._metrics["train"]["mean_token_accuracy"].append(counts["correct"] / counts["tokens"])
            self._total_train_tokens += int(inputs["attention_mask"].sum()) if "attention_mask" in inputs else int(inputs["input_ids"].numel())
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
            return loss

    return CompletionHeadSFTTrainer


def _causal_lm(model):
    from accelerate.utils import is_peft_model

    return model.get_base_model() if is_peft_model(model) else model


def _compiled(model) -> bool:
    """A torch.compile'd model (`trainer_args: {torch_compile: true}`): the completion head calls the backbone
    past the model's own forward, which would bypass the compiled graph, so such a model keeps TRL's path."""
    return hasattr(model, "_orig_mod")


def _prompt_learning(model) -> bool:
    """PEFT prompt learning (prefix, prompt tuning) adds virtual tokens in the PEFT model's own forward."""
    config = getattr(model, "peft_config", {}).get(getattr(model, "active_adapter", None)) if hasattr(model, "peft_config") else None
    return bool(getattr(config, "is_prompt_learning", False))


# ---- DPO: per-token log-probs of completion tokens only ----------------------------------------------------------

def _chunk_log_probs(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor):
    """log p(target) of one chunk of rows, and the detached figures TRL's DPO logs (entropy, mean logit, arg-max hit)."""
    with torch.autocast(hidden.device.type, enabled=False):
        logits = F.linear(hidden.float(), weight.float(), None if bias is None else bias.float())
    logp_all = torch.log_softmax(logits, dim=-1)  # once: the log-probs and the logged entropy both read it
    log_probs = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        mean_logits = logits.mean(-1)
        is_top1 = logits.argmax(-1) == targets
    return log_probs, entropy, mean_logits, is_top1


def completion_log_probs(causal_lm, model_inputs: dict, labels: torch.Tensor, chunk_tokens: int = CHUNK_TOKENS) -> dict[str, torch.Tensor]:
    """Per-token figures of each next token whose label is not -100, as [batch, length - 1] tensors holding 0
    elsewhere: `log_probs` (differentiable), and `entropy`, `mean_logits`, `is_top1` (detached, for the logs).
    What TRL's fused head returns for DPO, but the head runs on the completion positions only."""
    hidden = causal_lm.base_model(**model_inputs, use_cache=False).last_hidden_state[:, :-1]
    targets = labels[:, 1:]
    mask = targets != -100
    rows, wanted = hidden[mask], targets[mask]
    head = causal_lm.get_output_embeddings()
    starts = range(0, rows.size(0), chunk_tokens)
    parts = []
    for start in starts:
        args = (rows[start:start + chunk_tokens], head.weight, head.bias, wanted[start:start + chunk_tokens])
        parts.append(checkpoint(_chunk_log_probs, *args, use_reentrant=False) if len(starts) > 1 else _chunk_log_probs(*args))
    out = {}
    for i, name in enumerate(("log_probs", "entropy", "mean_logits", "is_top1")):
        dtype = torch.bool if name == "is_top1" else torch.float32
        values = torch.cat([p[i] for p in parts]) if parts else hidden.new_zeros(0, dtype=dtype)
        base = hidden.new_zeros(mask.shape, dtype=dtype)
        if name == "log_probs":  # a batch without completion tokens stays connected to the model: zeros with zero gradients
            base = base + hidden.sum() * 0
        out[name] = base.masked_scatter(mask, values)
    return out


def install_dpo_head(causal_lm) -> bool:
    """Make `causal_lm(..., labels=L, fused_lm_head=True)`, the call TRL's DPOTrainer makes after patching the model
    with its fused head, compute the completion positions only. Anything else (no fused head asked, pre-shifted
    labels, MoE router logits, WPO's extra field) goes to TRL's forward. Returns whether it was installed."""
    if not supports(causal_lm) or not getattr(causal_lm.forward, "__wrapped__", None):
        return False  # not a model TRL patched (or one whose logits are transformed): TRL's path
    trl_forward = causal_lm.forward

    def forward(*args, fused_lm_head=False, labels=None, **kwargs):
        if not fused_lm_head or args or labels is None or kwargs.get("shift_labels") is not None or kwargs.get("output_router_logits"):
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, **kwargs)
        kwargs.pop("num_items_in_batch", None)
        kwargs.pop("use_cache", None)
        figures = completion_log_probs(causal_lm, kwargs, labels)
        return _FusedOutput(**figures)

    forward.__wrapped__ = trl_forward.__wrapped__  # generate() validates its kwargs against the original signature
    forward.completion_head = True  # what tests and bench look for
    causal_lm.forward = forward
    return True


class _FusedOutput(dict):
    """The fields of TRL's FusedCausalLMOutput that DPO reads, as attributes; `log_sum_sq_probs` and `aux_loss` are
    None (their callers, WPO and MoE models, get TRL's own head)."""

    def __getattr__(self, name):
        return self.get(name)
