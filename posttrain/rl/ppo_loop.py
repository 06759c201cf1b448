"""The PPO loop's pieces: the named parts it trains and checkpoints, and one iteration
(rollout, scoring, advantages, updates).

The stage (posttrain/stages/ppo.py) wires models and data and hands `PPOParts` to
`training.run_own_loop`, which resumes, checkpoints and stops it like every other stage;
this module can import torch at the top without slowing `posttrain validate`.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from posttrain import distributed
from posttrain.errors import StageError
from posttrain.rl import ppo_math as pm
from posttrain.rl.rollout import Rollout, response_logprobs, sample, token_values


@dataclass
class PPOParts:
    """Everything one PPO run trains, reads and checkpoints."""

    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None with LoRA: the policy with its adapter disabled
    value: torch.nn.Module
    scorer: object  # posttrain.reward.scorer.RewardScorer
    tokenizer: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    kl_controller: pm.AdaptiveKLController
    history: list[dict] = field(default_factory=list)  # per-iteration stats, for curves
    # Several processes (`distribute`): what the updates go through so that gradients are averaged across ranks, the
    # policy and the critic wrapped in DistributedDataParallel, or sharded by FSDP2 (None: one process, the models themselves).
    actor: torch.nn.Module | None = None
    critic: torch.nn.Module | None = None
    sharded: bool = False  # FSDP2: each rank holds a shard of every weight and optimizer state

    def _models(self) -> torch.nn.Module:
        # The optimizer's two parameter groups live in two models: one module over both names every parameter.
        return torch.nn.ModuleDict({"policy": self.policy, "value": self.value})

    def save(self, directory: Path | None) -> None:
        """Every rank calls it (run_own_loop); rank 0, given the directory, writes. Sharded (FSDP2), every rank
        first joins in gathering the whole weights and optimizer state, which rank 0 receives."""
        policy, value, optimizer = None, None, None
        if self.sharded:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

            whole = StateDictOptions(full_state_dict=True, cpu_offload=True)  # rank 0 gets full CPU tensors, the others {}
            policy, value = get_model_state_dict(self.policy, options=whole), get_model_state_dict(self.value, options=whole)
            optimizer = get_optimizer_state_dict(self._models(), self.optimizer, options=whole)
        if directory is None:
            return
        save_file(_trainable_state(self.policy, policy), directory / "policy.safetensors")
        save_file(_trainable_state(self.value, value), directory / "value.safetensors")
        torch.save({"optimizer": optimizer if self.sharded else self.optimizer.state_dict(),
                    "scheduler": self.scheduler.state_dict(), "rng": torch.get_rng_state()}, directory / "optimizer_and_rng.pt")
        (directory / "loop_state.json").write_text(json.dumps({"step": len(self.history), "kl_coef": self.kl_controller.value,
                                                               "history": self.history}))

    def load(self, directory: Path) -> int:
        states = torch.load(directory / "optimizer_and_rng.pt", weights_only=True)
        if self.sharded:  # every rank reads the whole state and keeps its shard
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

            set_model_state_dict(self.policy, load_file(directory / "policy.safetensors"), options=StateDictOptions(full_state_dict=True, strict=False))
            set_model_state_dict(self.value, load_file(directory / "value.safetensors"), options=StateDictOptions(full_state_dict=True, strict=False))
            set_optimizer_state_dict(self._models(), self.optimizer, states["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            self.policy.load_state_dict(load_file(directory / "policy.safetensors"), strict=False)
            self.value.load_state_dict(load_file(directory / "value.safetensors"), strict=False)
            self.optimizer.load_state_dict(states["optimizer"])
        self.scheduler.load_state_dict(states["scheduler"])
        torch.set_rng_state(states["rng"])
        state = json.loads((directory / "loop_state.json").read_text())
        self.kl_controller.value = state["kl_coef"]
        self.history = state["history"]
        return state["step"]


def distribute(policy: torch.nn.Module, reference: torch.nn.Module | None, value: torch.nn.Module) -> dict:
    """Several processes: PPOParts' `actor`, `critic` and `sharded` for the recipe's strategy (one process: {}).

    ddp: the policy and the critic wrapped in DistributedDataParallel. fsdp2: torch's fully_shard (FSDP2, on the
    gloo group: CPUs too) applied in place to the policy, the value model and the reference, one group per decoder
    layer (the model's `_no_split_modules`) and one for the rest; a forward gathers a group's weights for itself and
    backward reduce-scatters the gradients. Call it before building the optimizer: fully_shard replaces parameters."""
    here = distributed.world()
    if not here.distributed:
        return {}
    critic = Critic(value)
    if distributed.strategy() != "fsdp2":
        from torch.nn.parallel import DistributedDataParallel

        return {"actor": DistributedDataParallel(policy), "critic": DistributedDataParallel(critic)}
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    mesh = init_device_mesh("cpu", (here.size,))  # the loop runs where the models were loaded: the CPU

    def shard(model: torch.nn.Module, root: torch.nn.Module) -> None:
        layers = set(getattr(model, "_no_split_modules", None) or ())
        for module in model.modules():
            if type(module).__name__ in layers:
                fully_shard(module, mesh=mesh)
        fully_shard(root, mesh=mesh)

    shard(policy, policy)
    register_fsdp_forward_method(policy, "generate")  # generate calls forward itself: gather the root's weights around it
    shard(value, critic)  # the critic reads the backbone and the score head directly: its forward is the root's
    if reference is not None:
        shard(reference, reference)
    return {"actor": policy, "critic": critic, "sharded": True}


class Critic(torch.nn.Module):
    """The value model as one module whose forward is `token_values` (it reads the backbone and the score head
    directly): what DistributedDataParallel wraps, since it averages the gradients of what its forward ran."""

    def __init__(self, value: torch.nn.Module):
        super().__init__()
        self.value = value

    def forward(self, rollout: Rollout) -> torch.Tensor:
        return token_values(self.value, rollout)


def ppo_iteration(parts: PPOParts, batch: list, config, step: int) -> dict:
    """One rollout batch: sample, score, KL-penalise, GAE, then `ppo_epochs` of minibatch updates."""
    policy, reference, value, scorer, tokenizer = parts.policy, parts.reference, parts.value, parts.scorer, parts.tokenizer
    optimizer, scheduler, kl_controller = parts.optimizer, parts.scheduler, parts.kl_controller
    timer = time.perf_counter()
    policy.eval()
    rollout = sample(policy, tokenizer, batch, config.max_length, config.max_new_tokens, config.temperature, config.top_p)
    time_generation = time.perf_counter() - timer

    timer = time.perf_counter()
    texts = [tokenizer.decode(ids[mask > 0], skip_special_tokens=True) for ids, mask in zip(rollout.response_ids, rollout.mask)]
    scores = torch.tensor(scorer.score([p + [{"role": "assistant", "content": t}] for p, t in zip(batch, texts)]))
    raw_scores = scores.clone()
    if config.missing_eos_penalty:
        scores = scores - config.missing_eos_penalty * (~rollout.ended_with_eos).float()
    if config.reward_clip:
        scores = scores.clamp(-config.reward_clip, config.reward_clip)
    if config.whiten_rewards:
        scores = pm.masked_whiten(scores.unsqueeze(0), torch.ones(1, len(scores)), total=distributed.summed).squeeze(0)
    time_scoring = time.perf_counter() - timer

    timer = time.perf_counter()
    mask = rollout.mask
    with torch.no_grad():
        old_logprobs, entropy = response_logprobs(policy, rollout, config.temperature)
        if reference is None:  # LoRA: the parent is the policy with its adapter disabled
            with policy.disable_adapter():
                ref_logprobs, _ = response_logprobs(policy, rollout, config.temperature)
        else:
            ref_logprobs, _ = response_logprobs(reference, rollout, config.temperature)
        old_values = parts.critic(rollout) if parts.sharded else token_values(value, rollout)
        kl = pm.kl_penalty(old_logprobs, ref_logprobs, config.kl_estimator)
        rewards = pm.token_rewards(scores, kl, mask, kl_controller.value)
        advantages, returns = pm.gae(rewards, old_values, mask, config.gamma, config.lam)
        advantages = pm.masked_whiten(advantages, mask, total=distributed.summed)  # the whole batch's, on every rank

    policy.train()
    value.train()
    sums = {"policy_loss": 0.0, "value_loss": 0.0, "clip_fraction": 0.0, "approx_kl": 0.0, "value_clip_fraction": 0.0}
    updates = 0
    for _ in range(config.ppo_epochs):
        for idx in torch.randperm(len(batch)).split(config.minibatch_size):
            mini = _select(rollout, idx)
            logprobs, _ = response_logprobs(parts.actor or policy, mini, config.temperature)
            values = parts.critic(mini) if parts.critic is not None else token_values(value, mini)
            pg_loss, pg_stats = pm.policy_loss(logprobs, old_logprobs[idx], advantages[idx], mask[idx], config.cliprange)
            vf_loss, vf_stats = pm.value_loss(values, old_values[idx], returns[idx], mask[idx], config.cliprange_value)
            loss = pg_loss + config.vf_coef * vf_loss
            if not torch.isfinite(loss):
                raise StageError(f"non-finite PPO loss at iteration {step}; lower the learning rate or kl_coef")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.max_grad_norm)
            optimizer.step()
            scheduler.step()
            updates += 1
            for key, val in {"policy_loss": pg_loss.item(), "value_loss": vf_loss.item(), **pg_stats, **vf_stats}.items():
                sums[key] += val
    time_update = time.perf_counter() - timer

    sequence_kl = (pm.kl_penalty(old_logprobs, ref_logprobs, "k1") * mask).sum(1).mean().item()
    # Several processes: the whole batch's KL (the ranks' shares are equal), so every rank's controller agrees.
    sequence_kl = sum(distributed.gather(sequence_kl)) / distributed.world().size
    kl_controller.update(sequence_kl, len(batch) * distributed.world().size)
    return {
        "reward": raw_scores.mean().item(),
        "score": scores.mean().item(),
        "kl": sequence_kl,
        "kl_coef": kl_controller.value,
        "entropy": pm.masked_mean(entropy, mask).item(),
        **{key: total / updates for key, total in sums.items()},
        "explained_variance": pm.explained_variance(old_values, returns, mask),
        "response_length": mask.sum(1).float().mean().item(),
        "eos_share": rollout.ended_with_eos.float().mean().item(),
        "time_generation_s": time_generation,
        "time_scoring_s": time_scoring,
        "time_update_s": time_update,
    }


def prompt_order(n_prompts: int, needed: int, seed: int) -> list[int]:
    """Epochs of shuffled prompt indices, fixed by the seed (so a resumed run sees the same batches)."""
    rng, order = random.Random(seed), []
    while len(order) < needed:
        epoch = list(range(n_prompts))
        rng.shuffle(epoch)
        order += epoch
    return order


def _select(rollout: Rollout, idx: torch.Tensor) -> Rollout:
    return Rollout(rollout.input_ids[idx], rollout.attention_mask[idx], rollout.prompt_length,
                   rollout.response_ids[idx], rollout.mask[idx], rollout.ended_with_eos[idx])


def _trainable_state(model, whole: dict | None = None) -> dict:
    # Only what trains (all weights, or the LoRA adapter and head), from the model or its gathered state (FSDP2);
    # clone to untie shared tensors.
    source = whole if whole is not None else dict(model.named_parameters())
    return {name: source[name].detach().clone().contiguous() for name, p in model.named_parameters() if p.requires_grad}

