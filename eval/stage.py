"""The eval stage: every model of the run, on the same tasks, with the same settings.

Models come from the registry by name (`base` and earlier training stages); scores carry
standard errors; per-document generations are kept under `<stage>/samples/`.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from posttrain.atomic import write_text_atomic
from posttrain.errors import StageError, did_you_mean
from posttrain.eval.harness import EvalSettings, evaluate_model
from posttrain.eval.suites import local_tasks, tasks_digest
from posttrain.eval.winrate import win_rate
from posttrain.stage import Stage, StageConfig, StageContext, StageResult


class EvalStageConfig(StageConfig):
    models: Literal["all"] | list[str] = Field("all", description="Models to evaluate: 'all' (base and every training stage) or a list of names.")
    tasks: list[str] = Field(min_length=1, description="Local suite task names (eval/tasks/) or lm-eval task names (online).")
    max_new_tokens: int = Field(48, gt=0)
    batch_size: int = Field(32, gt=0)
    system_prompt: str | None = None
    num_fewshot: int = Field(0, ge=0, description="Few-shot examples (lm-eval tasks only; local suites are zero-shot).")
    reward_model: str | None = Field(None, description="A reward_model stage (or reward model directory) that judges every generation.")
    min_reward_accuracy: float | None = Field(None, ge=0, le=1, description="Refuse to start when the reward model's held-out accuracy is below this.")
    compare_to: str | None = Field("sft", description="Baseline for reward-model win rates (when that model is evaluated).")

    @field_validator("tasks")
    @classmethod
    def _known_local_or_hub(cls, tasks: list[str]) -> list[str]:
        local = local_tasks()
        for name in tasks:
            # Anything else must be an lm-eval task, which needs the hub for its data.
            if name not in local and did_you_mean(name, local):
                raise ValueError(f"'{name}' is not a local task{did_you_mean(name, local)}")
        return tasks


class EvalStage(Stage):
    kind = "eval"
    Config = EvalStageConfig

    @classmethod
    def fingerprint_inputs(cls, config: EvalStageConfig) -> dict:
        return {"tasks": tasks_digest(config.tasks)}

    @staticmethod
    def _judge(scorer, samples: dict) -> dict:
        """Reward-model scores of every generation, in a fixed (task, document) order."""
        conversations, texts = [], []
        for task in sorted(samples):
            for s in samples[task]:
                conversations.append([{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": s["response"]}])
                texts.append(s["response"])
        return {"rewards": scorer.score(conversations), "texts": texts}

    def run(self, ctx: StageContext) -> StageResult:
        from posttrain.registry import tokenizer_fingerprint

        config: EvalStageConfig = ctx.config
        settings = EvalSettings(
            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size,
            system_prompt=config.system_prompt, num_fewshot=config.num_fewshot, seed=ctx.recipe.spec.seed,
        )
        scorer = None
        if config.reward_model:
            from posttrain.reward.scorer import gated_scorer

            directory = ctx.registry.model_dir(config.reward_model) if not Path(config.reward_model).is_dir() else Path(config.reward_model)
            scorer = gated_scorer(directory, config.min_reward_accuracy, who=f"stage '{ctx.name}'")
        models, template_fingerprints, judged = {}, {}, {}
        ctx.progress.start(ctx.name, len(ctx.evaluated_models))
        for i, name in enumerate(ctx.evaluated_models):
            tokenizer = ctx.registry.load_tokenizer(name)
            template_fingerprints[name] = tokenizer_fingerprint(tokenizer)
            result = evaluate_model(ctx.registry.load_model(name), tokenizer, config.tasks, settings)
            models[name] = result["scores"]
            if scorer is not None:
                judged[name] = self._judge(scorer, result["samples"])
                models[name]["reward_model"] = {"mean_reward": statistics.fmean(judged[name]["rewards"]), "n": len(judged[name]["rewards"])}
            lines = [json.dumps({"task": task, **s}) for task, rows in result["samples"].items() for s in rows]
            write_text_atomic(ctx.stage_dir / "samples" / f"{name}.jsonl", "\n".join(lines) + "\n")
            ctx.progress.update(i + 1, len(ctx.evaluated_models), f"evaluated {name}")
        ctx.progress.finish()
        if len(set(template_fingerprints.values())) > 1:
            raise StageError(f"models were evaluated with different tokenizers or chat templates: {template_fingerprints}; the comparison would not be fair")

        win_rates = {}
        if scorer is not None and config.compare_to in judged:
            base = judged[config.compare_to]
            for name, j in judged.items():
                if name not in (config.compare_to, "base"):
                    win_rates[f"{name}_vs_{config.compare_to}"] = win_rate(j["rewards"], base["rewards"], j["texts"], base["texts"])
        evaluation = {
            "settings": settings.to_dict() | {"tokenizer_fingerprint": next(iter(template_fingerprints.values()))},
            "tasks": config.tasks,
            "higher_is_better": result["higher_is_better"],
            "models": models,
            "reward_model": config.reward_model,
            "win_rates": win_rates,
        }
        return StageResult(metrics={"models_evaluated": len(models)}, evaluation=evaluation)
