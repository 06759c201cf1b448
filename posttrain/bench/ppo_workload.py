"""The ppo workload: recipes/chat.yaml's ppo stage (`--set choices.alignment=ppo`), run as `posttrain run` runs it,
each iteration split into generation, scoring and update from outside the loop.

The recipe's sft and rm stages are trained once into WORK_DIR/recipes/chat (`prepare`); every measured run copies
them (`reuse`) and trains the ppo stage afresh, with the recipe's settings and `--steps` iterations. The recipe's eval
stage is left out (a profile of its own, added by an override). TRL 1.16 has no PPOTrainer (nor has
trl.experimental), so posttrain's loop is measured alone.

Wrappers around the names the loop calls in posttrain.rl.ppo_loop time, within each `ppo_iteration`, in wall and CPU
seconds:
- generation: `sample` (the policy's rollout); it also counts the rollout tokens (the response mask: tokens up to and
  including the first EOS);
- scoring: the reward model (`RewardScorer.score`), and the forwards without gradients over the rollout (the old
  policy's and the reference's log-probs, the value model's values: `response_logprobs`, `token_values`);
- update: the rest of the iteration (KL penalty, GAE, and `ppo_epochs` of minibatch forwards, backwards and steps).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "chat.yaml"
PROFILE = "bench"
PREPARED = ("sft", "rm")


def overrides(stages: tuple[str, ...], iterations: int | None = None) -> list[str]:
    """The recipe's stages `stages` as a profile of their own, with ppo as the alignment."""
    return ([f"profiles.{PROFILE}.stages=[{', '.join(stages)}]", "choices.alignment=ppo"]
            + ([f"stages.align.ppo.max_steps={iterations}"] if iterations else []))


def prepare(work_dir: Path) -> Path:
    """The recipe's sft and rm stages, trained once (a later call finds them cached): the run each measured run reuses."""
    from posttrain import api
    from posttrain.progress import ProgressReporter

    run_dir = Path(work_dir) / "recipes" / RECIPE.stem
    api.run(RECIPE, profile=PROFILE, overrides=overrides(PREPARED), output=run_dir, reporter=ProgressReporter(quiet=True))
    return run_dir


class Clock:
    """Wall and CPU seconds spent inside `timing()`, summed over every entry."""

    def __init__(self):
        self.seconds = self.cpu_seconds = 0.0

    @contextlib.contextmanager
    def timing(self):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - wall
            self.cpu_seconds += time.process_time() - cpu


class IterationPhases:
    """Per PPO iteration: its time, its generation and scoring time, its rollout tokens and mean reward."""

    def __init__(self):
        self.iterations: list[dict] = []
        self.first_started: float | None = None
        self._clocks: dict[str, Clock] | None = None  # the running iteration's
        self._tokens = 0

    def _timed(self, phase: str, function, only_without_gradients: bool = False):
        import torch

        def timed(*args, **kwargs):
            if self._clocks is None or (only_without_gradients and torch.is_grad_enabled()):
                return function(*args, **kwargs)  # outside an iteration, or an update's forward
            with self._clocks[phase].timing():
                return function(*args, **kwargs)

        return timed

    @contextlib.contextmanager
    def installed(self):
        from posttrain.reward.scorer import RewardScorer
        from posttrain.rl import ppo_loop

        originals = {name: getattr(ppo_loop, name) for name in ("ppo_iteration", "sample", "response_logprobs", "token_values")}
        score = RewardScorer.score
        phases = self

        def iteration(parts, batch, config, step):
            phases.first_started = phases.first_started or time.perf_counter()
            phases._clocks, phases._tokens = {"iteration": Clock(), "generation": Clock(), "scoring": Clock()}, 0
            clocks = phases._clocks
            try:
                with clocks["iteration"].timing():
                    stats = originals["ppo_iteration"](parts, batch, config, step)
            finally:
                phases._clocks = None
            phases.iterations.append({"seconds": clocks["iteration"].seconds, "cpu_seconds": clocks["iteration"].cpu_seconds,
                                      **{f"{p}_{unit}": getattr(clocks[p], unit) for p in ("generation", "scoring") for unit in ("seconds", "cpu_seconds")},
                                      "rollout_tokens": phases._tokens, "reward": stats["reward"]})
            return stats

        def sample(*args, **kwargs):
            rollout = phases._timed("generation", originals["sample"])(*args, **kwargs)
            phases._tokens += int(rollout.mask.sum())
            return rollout

        # The stage imports ppo_iteration when it runs, and ppo_iteration reads these names from its module: both get the wrappers.
        ppo_loop.ppo_iteration, ppo_loop.sample = iteration, sample
        ppo_loop.response_logprobs = self._timed("scoring", originals["response_logprobs"], only_without_gradients=True)
        ppo_loop.token_values = self._timed("scoring", originals["token_values"], only_without_gradients=True)
        RewardScorer.score = self._timed("scoring", score)
        try:
            yield self
        finally:
            for name, function in originals.items():
                setattr(ppo_loop, name, function)
            RewardScorer.score = score


def measure(spec: dict) -> dict:
    from posttrain import api
    from posttrain.bench.worker import threads
    from posttrain.progress import ProgressReporter

    started = time.perf_counter()
    phases = IterationPhases()
    with phases.installed():
        results = api.run(RECIPE, profile=PROFILE, overrides=overrides((*PREPARED, "align"), spec["steps"]),
                          output=Path(spec["work_dir"]) / "run", reuse=spec["prepared_run"], reporter=ProgressReporter(quiet=True))
    iterations = phases.iterations
    return {
        "side": spec["side"], "workload": "ppo", "steps": len(iterations), "step_seconds": [i["seconds"] for i in iterations],
        "step_cpu_seconds": [i["cpu_seconds"] for i in iterations], "setup_seconds": (phases.first_started or started) - started,
        "tokens": sum(i["rollout_tokens"] for i in iterations), "losses": [], "precision": results.stages["align"].metrics["precision"],
        "iterations": iterations, "threads": threads(),
    }
