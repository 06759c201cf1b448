"""Several processes on one run: which process this is, and what only rank 0 does.

`torchrun --nproc_per_node N -m posttrain run RECIPE` and `accelerate launch -m posttrain run
RECIPE` start N copies of the same command; the launcher tells each its RANK and WORLD_SIZE.
Every rank trains (the TRL trainers and the PPO loop run under torch.distributed); rank 0 alone
owns the run directory: the lock, the manifests, the caching decisions, checkpoint commits,
the saved models and the reports. A decision rank 0 makes (cached or not, which checkpoint to
resume from, an error) is broadcast, so every rank acts on the same one. Everything goes
through torch.distributed: no other transport.

A rank that dies (kill -9, out of memory) fails the others' next collective at once (its connection
closes) and is seen by the launcher, which stops the rest; a collective that waits on a rank that
hangs gives up after `collective_timeout()` seconds (POSTTRAIN_COLLECTIVE_TIMEOUT_S), so no rank
waits for good.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, TypeVar

from posttrain.errors import PosttrainError, RecipeError

T = TypeVar("T")

STRATEGIES = ("ddp", "fsdp2", "zero2", "zero3")
TIMEOUT_VARIABLE = "POSTTRAIN_COLLECTIVE_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800  # long enough for rank 0 to evaluate or save a large model while the others wait
CHECKPOINT_WORLD_FILE = "world.json"  # in each committed checkpoint: how many processes wrote it
CONFIGS_DIR = Path(__file__).parent / "distributed_configs"  # accelerate configs per strategy (accelerate launch --config_file)

# What each built-in stage kind supports on several processes. A plugin's kind declares its own with
# a `distributed_strategies` class attribute (a tuple of STRATEGIES); a kind that declares nothing runs
# in one process only, and a multi-process run that plans it is refused before anything trains.
TRL_TRAINER_STRATEGIES = STRATEGIES  # the Trainer shards through accelerate (fsdp2, ZeRO) or wraps in DDP
BUILTIN_SUPPORT: dict[str, tuple[str, ...]] = {
    "sft": TRL_TRAINER_STRATEGIES,
    "dpo": TRL_TRAINER_STRATEGIES,
    "orpo": TRL_TRAINER_STRATEGIES,
    "kto": TRL_TRAINER_STRATEGIES,
    "reward_model": TRL_TRAINER_STRATEGIES,
    "rloo": ("ddp",),
    "grpo": ("ddp",),
    "ppo": ("ddp", "fsdp2"),  # our own loop: DistributedDataParallel around the policy and the critic, or torch's fully_shard
    "eval": STRATEGIES,  # evaluation trains nothing: the strategy does not apply to it
}
# Kinds for which fsdp2 needs no accelerate, so it runs on CPU processes (gloo) too: ppo calls torch's fully_shard
# itself; eval trains nothing. Every other kind shards through the Trainer, i.e. accelerate, which needs GPUs for FSDP.
FSDP2_WITHOUT_ACCELERATE = ("ppo", "eval")


@dataclass(frozen=True)
class World:
    """This process's place among the launched ones (from the launcher's environment)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun and accelerate launch set them (one process when unset)."""
    def number(name: str, default: int) -> int:
        try:
            return int(os.environ.get(name, default))
        except ValueError:
            raise PosttrainError(f"environment variable {name}={os.environ[name]!r} is not a number; "
                                 "start several processes with torchrun or accelerate launch") from None

    return World(number("RANK", 0), number("WORLD_SIZE", 1), number("LOCAL_RANK", 0))


def is_main() -> bool:
    return world().is_main


def collective_timeout() -> int:
    value = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = int(value)
    except ValueError:
        seconds = 0
    if seconds <= 0:
        raise PosttrainError(f"{TIMEOUT_VARIABLE}={value!r}: expected a whole number of seconds > 0, e.g. {DEFAULT_TIMEOUT_S}")
    return seconds


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def init() -> World:
    """Join the launched processes (once per process): gloo on the CPU, NCCL for CUDA tensors with gloo
    beside it for the small objects rank 0 broadcasts. The Trainer finds the group and reuses it."""
    here = world()
    if not here.distributed or _initialized():
        return here
    import torch
    import torch.distributed as dist

    backend = "gloo"
    if torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes"):
        torch.cuda.set_device(here.local_rank)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=collective_timeout()))
    return here


def leave() -> None:
    """Leave the process group, if this process joined one. Left to the interpreter's exit, torch tears
    gloo down while its threads may still run, and a rank that finished first aborted ("terminate called
    without an active exception", seen once in CI). Local: no collective, so a rank whose peer died leaves too."""
    if "torch.distributed" in sys.modules and _initialized():  # never import torch just to find out
        import torch.distributed as dist

        dist.destroy_process_group()


def barrier() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def broadcast(value: T) -> T:
    """Rank 0's `value`, on every rank (a picklable object)."""
    if not _initialized():
        return value
    import torch.distributed as dist

    box = [value if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: T) -> list[T]:
    """Every rank's `value`, in rank order, on every rank."""
    if not _initialized():
        return [value]
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def summed(tensor):
    """The tensor added up over every rank (the tensor itself in one process)."""
    if not _initialized():
        return tensor
    import torch.distributed as dist

    total = tensor.clone()
    dist.all_reduce(total)
    return total


def shared_map(items: list, compute: Callable[[list], list]) -> list:
    """`compute(items)` with the work split across the ranks: each computes every size-th item, and every
    rank gets all the results back in the items' order. One process: `compute(items)`."""
    if not _initialized():
        return compute(items)
    here = world()
    shares = gather(compute(items[here.rank::here.size]))
    results: list = [None] * len(items)
    for rank, share in enumerate(shares):
        results[rank::here.size] = share
    return results


def on_main(decide: Callable[[], T]) -> T:
    """Rank 0 decides (`decide()`), every rank gets the decision. A user error raised on rank 0 is raised
    on every rank, with the same message, so no rank goes on alone or waits for one that gave up."""
    if not _initialized():
        return decide()
    outcome: tuple = ("ok", None)
    if is_main():
        try:
            outcome = ("ok", decide())
        except PosttrainError as e:
            outcome = ("error", (str(e), e.exit_code))
            broadcast(outcome)
            raise
    outcome = broadcast(outcome)
    if outcome[0] == "error":
        raise _same_error(*outcome[1])
    return outcome[1]


def _same_error(message: str, exit_code: int) -> PosttrainError:
    error = PosttrainError(message)
    error.exit_code, error.same_on_every_rank = exit_code, True
    return error


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (it writes what the others then read: a built-in base, an imported GGUF)."""
    if is_main():
        yield
        barrier()
    else:
        barrier()
        yield


def mean_of(figures: dict) -> dict:
    """Each number in `figures` averaged over the ranks (every rank's dict has the same keys)."""
    if not world().distributed:
        return figures
    every = gather(figures)
    return {key: sum(f[key] for f in every) / len(every) if isinstance(value, (int, float)) else value
            for key, value in figures.items()}


# ---- recipe: the strategy and what each stage kind supports --------------------------------------

_strategy = "ddp"  # the running recipe's distributed.strategy, set by the pipeline (stages never read the recipe)


def use_strategy(strategy: str) -> None:
    global _strategy
    _strategy = strategy


def strategy() -> str:
    return _strategy


def describe(recipe) -> str:
    """What `posttrain plan` says about several processes: the strategy and which stages can run under it."""
    chosen = recipe.spec.distributed.strategy
    refused = [s.name for s in recipe.stages if chosen not in supported_strategies(s.stage_cls)]
    verdict = "every stage supports it" if not refused else f"not supported by {', '.join(refused)} (refused before training)"
    problem = strategy_problem(chosen, [s.kind for s in recipe.stages])
    if problem:
        verdict += f"; on this machine: {problem}"
    return (f"distributed: strategy {chosen} when launched on several processes (torchrun --nproc_per_node N -m posttrain run ...); "
            f"{verdict}")


def supported_strategies(stage_cls) -> tuple[str, ...]:
    declared = getattr(stage_cls, "distributed_strategies", None)
    if declared is not None:
        return tuple(declared)
    return BUILTIN_SUPPORT.get(getattr(stage_cls, "kind", ""), ())


def check_plan(recipe, size: int | None = None) -> None:
    """One line, before anything trains, for a stage kind or setting that cannot run with this many processes
    under the recipe's strategy. One process: nothing to check."""
    size = world().size if size is None else size
    if size <= 1:
        return
    strategy = recipe.spec.distributed.strategy
    where = f"{recipe.path}"
    launched = launched_strategy()
    if launched is not None and launched != strategy:
        raise RecipeError(f"{where}: distributed.strategy: the launcher's accelerate config is {launched} and the recipe says "
                          f"{strategy}; use --set distributed.strategy={launched}, or launch with "
                          f"--config_file {CONFIGS_DIR.relative_to(CONFIGS_DIR.parent.parent) / (strategy + '.yaml')}")
    for stage in recipe.stages:
        supported = supported_strategies(stage.stage_cls)
        if strategy not in supported:
            how = (f"it supports {', '.join(supported)}; set distributed: {{strategy: {supported[0]}}}" if supported
                   else "it declares no multi-process support; run it in one process (python -m posttrain run ...)")
            raise RecipeError(f"{where}: stages.{stage.name}: stage kind '{stage.kind}' cannot run on {size} processes "
                              f"with strategy {strategy}: {how}")
        problem = _combination_problem(strategy, stage.config, size)
        if problem:
            raise RecipeError(f"{where}: stages.{stage.name}: {problem}")
    problem = strategy_problem(strategy, [stage.kind for stage in recipe.stages])
    if problem:
        raise RecipeError(f"{where}: distributed.strategy: {strategy}: {problem}")


def launched_strategy() -> str | None:
    """The strategy an `accelerate launch --config_file` with FSDP or DeepSpeed asked for (None: plain processes)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp2" if os.environ.get("FSDP_VERSION", "1") == "2" else "fsdp1"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        return f"zero{os.environ.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    return None


def _combination_problem(strategy: str, config, size: int) -> str | None:
    if config.kind == "ppo" and (config.batch_size % size or config.minibatch_size % size):
        # PPO's batch_size and minibatch_size are the whole batch's; each rank rolls out and updates on an equal share.
        return (f"ppo on {size} processes splits each rollout batch evenly: batch_size ({config.batch_size}) and "
                f"minibatch_size ({config.minibatch_size}) must be multiples of {size}")
    lora = getattr(config, "lora", None)
    if lora is None:
        return None
    if lora.load_in_4bit and strategy != "ddp":
        return (f"QLoRA (lora.load_in_4bit) with strategy {strategy} is refused: bitsandbytes' packed 4-bit weights "
                f"cannot be sharded (FSDP2/ZeRO split parameters, not 4-bit blocks); use strategy: ddp, or LoRA without load_in_4bit")
    if strategy == "fsdp2":
        return ("LoRA with strategy fsdp2 is refused: posttrain merges the adapter into the parent's weights when it saves "
                "the model, which it does from unsharded weights only; use strategy: ddp for LoRA (the adapter is small: "
                "sharding saves little)")
    if strategy == "zero3":
        return ("LoRA with strategy zero3 is refused: posttrain merges the adapter into full weights when it saves the model, "
                "and ZeRO-3 keeps every weight partitioned across ranks; use strategy: zero2 or ddp for LoRA")
    return None


def strategy_problem(strategy: str, kinds: list[str]) -> str | None:
    """Why the strategy cannot run on this machine for stages of these kinds, or None."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")
    through_trainer = sorted({kind for kind in kinds if kind not in FSDP2_WITHOUT_ACCELERATE})
    if strategy == "fsdp2" and not cuda and through_trainer:
        # torch's FSDP2 itself runs on gloo (ppo shards with it on CPUs), but accelerate (which the Trainer trains
        # through) turns FSDP on only for GPU-like process groups: on CPUs the Trainer would quietly train with DDP instead.
        return (f"sharding runs on CUDA GPUs only here for {', '.join(through_trainer)} (the Trainer shards through "
                "accelerate, which enables FSDP for GPU process groups, not for CPU processes); use strategy: ddp on "
                "CPUs (ppo alone shards on CPUs: it calls torch's fully_shard itself)")
    if strategy in ("zero2", "zero3"):
        if importlib.util.find_spec("deepspeed") is None:
            return "DeepSpeed is not installed (pip install deepspeed; it needs CUDA GPUs); or use strategy: ddp"
        if not cuda:
            return "DeepSpeed ZeRO needs CUDA GPUs and this machine has none; use strategy: ddp on CPUs"
    return None


def check_trainer(trainer) -> None:
    """The Trainer trains with the strategy asked for (a launcher or library that quietly fell back to DDP is a bug
    to report, not a run to finish)."""
    if not world().distributed or strategy() == "ddp":
        return
    sharded = getattr(trainer, "is_fsdp_enabled", False) if strategy() == "fsdp2" else getattr(trainer, "is_deepspeed_enabled", False)
    if not sharded:
        from posttrain.errors import StageError

        raise StageError(f"strategy {strategy()} was asked for, but the Trainer set up "
                         f"{trainer.accelerator.state.distributed_type.value}; use strategy: ddp here (docs/scaling.md)")


def trainer_arguments(strategy: str) -> dict:
    """TrainingArguments fields for the strategy, when several processes run (DDP needs none: the Trainer wraps the
    model itself). Launched by `accelerate launch --config_file` with an FSDP or DeepSpeed config, accelerate's own
    environment already says the same."""
    if not world().distributed:
        return {}
    if strategy == "ddp":
        # Every weight of a causal LM or reward model takes part in the loss; finding unused ones costs a graph walk per step.
        return {"ddp_find_unused_parameters": False}
    if strategy == "fsdp2":
        return {"fsdp": "full_shard auto_wrap",
                "fsdp_config": {"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "reshard_after_forward": True,
                                "state_dict_type": "FULL_STATE_DICT", "cpu_ram_efficient_loading": False}}
    stage = 2 if strategy == "zero2" else 3
    return {"deepspeed": {"zero_optimization": {"stage": stage, **({"stage3_gather_16bit_weights_on_model_save": True} if stage == 3 else {})},
                          "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
                          "gradient_clipping": "auto", "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}}


# ---- checkpoints: written by every rank, committed once, resumed with the same world size -------


def record_world(checkpoint: Path, strategy: str) -> None:
    (Path(checkpoint) / CHECKPOINT_WORLD_FILE).write_text(json.dumps({"world_size": world().size, "strategy": strategy}) + "\n")


def check_resumable(checkpoint: Path, stage: str, strategy: str) -> None:
    """A checkpoint resumes only with the world size (and strategy) that wrote it: the data position, the
    per-rank RNG states and a sharded optimizer are per rank. One line otherwise."""
    file = Path(checkpoint) / CHECKPOINT_WORLD_FILE
    written = json.loads(file.read_text()) if file.is_file() else {"world_size": 1, "strategy": "ddp"}
    here = world().size
    if written["world_size"] != here or (here > 1 and written.get("strategy", "ddp") != strategy):
        raise PosttrainError(
            f"stage '{stage}': checkpoint {checkpoint} was written by {written['world_size']} process(es) with strategy "
            f"{written.get('strategy', 'ddp')}, and this run has {here} with {strategy}; resume with the same number of "
            f"processes and strategy, or pass --force {stage} to restart the stage from its parent")


def other_rank_reporter():
    """A rank other than 0 prints nothing and writes no log: rank 0 speaks for the run."""
    from posttrain.progress import ProgressReporter

    class OtherRankReporter(ProgressReporter):
        def message(self, text: str) -> None:
            pass

        def start(self, label: str, total: int | None) -> None:
            pass

        def update(self, completed: int, total: int | None = None, info: str = "") -> None:
            pass

        def finish(self, summary: str = "", stopped: bool = False) -> None:
            pass

    return OtherRankReporter(quiet=True)


def commit_checkpoints(store):
    """The Trainer callback that commits each checkpoint once: every rank has written its part (rank 0 the
    model, optimizer and trainer state, each rank its RNG state), then rank 0 records the world size and
    commits, and the others wait for the commit."""
    from posttrain.checkpoints import CommitCheckpoints

    class CommitOnce(CommitCheckpoints):
        def on_save(self, args, state, control, **kwargs):
            barrier()
            if is_main():
                written = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if written.is_dir():
                    record_world(written, strategy())
                super().on_save(args, state, control, **kwargs)
            barrier()

    return CommitOnce(store)


def averaged_train_loss(log_history: list[dict]) -> list[dict]:
    """The Trainer's closing `train_loss` is each rank's own running sum (the losses it logs on the way are
    averaged across ranks, this one is not): replaced by the mean over ranks, which is the loss over the
    global batches, as one process reports it."""
    if not world().distributed:
        return log_history
    final = next((entry for entry in reversed(log_history) if "train_loss" in entry), None)
    losses = gather(final["train_loss"] if final else None)
    if final is not None and None not in losses:
        final["train_loss"] = sum(losses) / len(losses)
    return log_history


def lost_peer(error: BaseException) -> PosttrainError | None:
    """A collective that failed because another rank died or stopped answering, as one line (None for any
    other error). The launcher stops the remaining ranks; committed checkpoints are intact."""
    if not world().distributed or not isinstance(error, RuntimeError):
        return None
    import torch.distributed as dist

    text = str(error)
    signs = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "timed out", "Timed out", "Socket Timeout")
    if not isinstance(error, dist.DistError) and not any(sign in text for sign in signs):
        return None
    return PosttrainError(f"rank {world().rank}: another process of this run died or stopped answering "
                          f"({text.splitlines()[0][-120:].strip()}); committed checkpoints are intact: run the same "
                          f"command (same number of processes) to resume")


def unsharded(model, fresh: Callable[[], object]):
    """The model whole, on rank 0, for saving: `model` itself unless FSDP2 sharded it; then its full state dict,
    gathered through torch.distributed.checkpoint, loaded into `fresh()` (a new copy of the parent). Every rank
    must call this (the gather is a collective); ranks other than 0 get None."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main():
        return None
    whole = fresh()
    whole.load_state_dict(full)
    return whole
