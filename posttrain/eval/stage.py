"""The eval stage: every model of the run, on the same tasks, with the same settings.

Models arrive resolved on the context (`ctx.inputs.evaluated`: `base` and earlier training stages); scores carry
standard errors; per-document generations, each with its own reward when a reward model judges
(`posttrain.results.Sample`), are kept under `<stage>/samples/`. An unchanged model is served from
`<stage>/cache/`. With `judge:`, a chat model or an OpenAI-compatible endpoint judges each model's answers
against the baseline's, in both orders (posttrain.eval.judge; verdicts cached under `<stage>/judge_cache/`).
The result is a typed `posttrain.results.Evaluation`.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from posttrain import distributed
from posttrain.atomic import write_text_atomic
from posttrain.errors import RecipeError, StageError
from posttrain.eval.harness import EvalSettings, evaluate_model
from posttrain.eval.judge import CACHE_DIRNAME as JUDGE_CACHE_DIRNAME, JudgeSettings, judge_models, make_judge
from posttrain.eval.registry import check_task_names
from posttrain.eval.suites import find_tasks, lm_eval_declared_metrics, metric_info, tasks_digest
from posttrain.eval.winrate import win_rate
from posttrain.release_gates import JUDGE_WIN_RATE_METRICS, MEAN_REWARD, WIN_RATE_METRICS
from posttrain.results import (REWARD_METRIC, REWARD_TASK, CacheStats, Evaluation, Example, ModelScores, Response, Sample, TaskScores,
                               WinRate, pair_samples, samples_path, samples_text)
from posttrain.stage import BASE, Role, Stage, StageConfig, StageContext, StageInputs, StageResult, setting_error

BENCHMARK_GROUP = "benchmarks"  # the report's group for lm-eval tasks


def _one_line(err: RecipeError) -> PydanticCustomError:
    """A task problem as a pydantic error: the recipe names the file and key, and prints it as one line."""
    return PydanticCustomError("eval_task", str(err))  # no context: the message is not a template


def _check_task(name: str, info: ValidationInfo) -> str:
    """Each task name when the recipe is validated, against every task it could be (see `check_task_names`)."""
    if "task_paths" in info.data:  # else task_paths failed, and that is the error to show
        try:
            check_task_names([name], info.data["task_paths"])
        except RecipeError as e:
            raise _one_line(e) from None
    return name


class EvalStageConfig(StageConfig):
    models: Literal["all"] | list[str] = Field("all", description="Models to evaluate: 'all' (base and every training stage) or a list of names.")
    task_paths: list[Path] = Field(default_factory=list, description=(
        "Directories of your own tasks (relative to the current directory): posttrain suites (YAML + JSONL, as in "
        "eval/tasks/) and lm-eval task YAMLs (lm-eval's include path)."))
    tasks: list[Annotated[str, AfterValidator(_check_task)]] = Field(min_length=1, description=(
        "Task names: shipped suites (eval/tasks/), suites and lm-eval YAMLs under task_paths, or lm-eval's registered tasks."))
    max_new_tokens: int = Field(48, gt=0)
    batch_size: int = Field(32, gt=0)
    system_prompt: str | None = None
    num_fewshot: int = Field(0, ge=0, description="Few-shot examples (lm-eval tasks only; local suites are zero-shot).")
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N documents of each task (quick checks); recorded with the settings.")
    reward_model: str | None = Field(None, description="A reward_model stage (or reward model directory) that judges every generation.")
    min_reward_accuracy: float | None = Field(None, ge=0, le=1, description="Refuse to start when the reward model's held-out accuracy is below this.")
    compare_to: str | None = Field("sft", description="Baseline for reward-model and judge win rates and the report's deltas (when that model is evaluated).")
    judge: JudgeSettings | None = Field(None, description=(
        "A pairwise judge of each model's answers against compare_to's, in both orders: {model: <base, a policy stage, a model directory "
        "or a hub id>} or {endpoint: {base_url, model, api_key_env}}, with max_new_tokens, prompt, max_pairs."))
    examples_per_task: int = Field(3, ge=0, description="Held-out prompts per task shown side by side in the report (the first N, so every run shows the same).")
    cache: bool = Field(True, description="Serve an unchanged model (same fingerprint, tasks and settings) from <stage>/cache/.")

    @model_validator(mode="after")
    def _judge_has_pairs(self):
        if self.judge is None:
            return self
        if self.compare_to is None:
            raise setting_error("compare_to", "the judge compares each model with compare_to; name the baseline (e.g. compare_to: sft)")
        if self.models != "all":
            if self.compare_to not in self.models:
                raise setting_error("compare_to", f"'{self.compare_to}' is not evaluated (models: {', '.join(self.models)}); the judge "
                                                  "compares each model with it: add it to models or name another")
            if not [m for m in self.models if m not in (self.compare_to, BASE)]:
                raise setting_error("judge", f"nothing to judge: every evaluated model is base or the baseline '{self.compare_to}'; "
                                             "evaluate a trained model besides it")
        return self

    @field_validator("task_paths")
    @classmethod
    def _task_directories(cls, task_paths: list[Path]) -> list[Path]:
        try:
            find_tasks(task_paths)  # each a directory; every YAML in it readable; no name defined twice
        except RecipeError as e:
            raise _one_line(e) from None
        return task_paths


def _ordered_samples(samples: dict) -> list[dict]:
    """Every generation in one fixed (task, document) order: the order a judge scores them in (the cache
    stores its rewards as a list in this order; `_samples` pairs them once, on reading)."""
    return [{"task": task, **s} for task in sorted(samples) for s in samples[task]]


def _mean_with_stderr(values: list[float]) -> tuple[float, float]:
    stderr = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else 0.0
    return statistics.fmean(values), stderr


class EvalStage(Stage):
    kind = "eval"
    role = Role.EVALUATION
    Config = EvalStageConfig
    shared_caches = ("cache", JUDGE_CACHE_DIRNAME)  # keyed by model fingerprint, tasks and settings; by judge and pair

    @classmethod
    def inputs(cls, config: EvalStageConfig) -> StageInputs:
        evaluates = config.models if config.models == "all" else tuple(config.models)
        judge_model = (config.judge.model,) if config.judge is not None and config.judge.model is not None else ()
        declared = StageInputs(evaluates=evaluates, judge=config.reward_model, models_read=judge_model)
        declared.keys["models_read"] = "judge.model"
        return declared

    @classmethod
    def fingerprint_inputs(cls, config: EvalStageConfig) -> dict:
        inputs = {"tasks": tasks_digest(config.tasks, config.task_paths)}
        judge_model = config.judge.model if config.judge is not None else None
        if judge_model is not None and Path(judge_model).is_dir():  # a stage is a dependency; a directory is its files
            from posttrain.model_store import directory_fingerprint

            inputs["judge_model"] = directory_fingerprint(Path(judge_model))
        return inputs

    @classmethod
    def prepare_data(cls, config: EvalStageConfig, data_files, seed):
        """Nothing to read; checked before anything trains: the judge endpoint's key is in the environment."""
        if config.judge is not None:
            config.judge.check_ready()
        return None

    @classmethod
    def measured_metrics(cls, config: EvalStageConfig) -> list[str]:
        """Suites' metrics (shipped and under task_paths), the metrics an lm-eval YAML under task_paths lists, and the
        reward model's when one judges (a registered lm-eval task's are known only after it runs)."""
        declared = {**metric_info(config.tasks, config.task_paths), **lm_eval_declared_metrics(config.tasks, find_tasks(config.task_paths))}
        names = [f"{task}/{metric}" for task in config.tasks for metric in declared.get(task, ())]
        return (names + ([MEAN_REWARD, *WIN_RATE_METRICS] if config.reward_model else [])
                + (list(JUDGE_WIN_RATE_METRICS) if config.judge is not None else []))

    @staticmethod
    def _judge(scorer, samples: dict) -> list[float]:
        conversations = [[{"role": "user", "content": s["prompt"]}, {"role": "assistant", "content": s["response"]}]
                         for s in _ordered_samples(samples)]
        return distributed.shared_map(conversations, scorer.score)  # several processes: each scores its share

    @staticmethod
    def _reward_model(ctx: StageContext, config: EvalStageConfig):
        """The gated scorer and an identity for its judgements (for the cache), or (None, None)."""
        judge = ctx.inputs.judge
        if judge is None:
            return None, None
        from posttrain.reward.scorer import gated_scorer

        scorer = gated_scorer(Path(judge.location), config.min_reward_accuracy, who=f"stage '{ctx.name}'")
        return scorer, judge.fingerprint

    def _evaluate_one(self, ctx, model, tokenizer_fp, settings, cache, scorer, judge_id) -> tuple[dict, bool]:
        """One model's entry (scores, samples, rewards by judge) and whether it came from the cache."""
        key = cache.key(f"{model.fingerprint}|{tokenizer_fp}") if cache is not None else None
        entry = distributed.on_main(lambda: cache.load(key) if key else None)  # one decision for every rank
        hit = entry is not None
        if entry is None:
            result = evaluate_model(ctx.store.load_model(model), ctx.store.load_tokenizer(model), ctx.config.tasks, settings,
                                    ctx.config.task_paths)
            entry = {"model": model.name, "model_fingerprint": model.fingerprint, **result, "rewards": {}}
        judged = scorer is None or judge_id in entry["rewards"]
        if not judged:  # stored generations, new judge: score them without generating again
            entry["rewards"][judge_id] = self._judge(scorer, entry["samples"])
        if key and not (hit and judged) and distributed.is_main():
            cache.store(key, entry)
        return entry, hit

    def run(self, ctx: StageContext) -> StageResult:
        from posttrain.model_store import tokenizer_fingerprint

        config: EvalStageConfig = ctx.config
        settings = EvalSettings(
            max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, system_prompt=config.system_prompt,
            num_fewshot=config.num_fewshot, seed=ctx.seed, limit=config.limit,
        )
        scorer, judge_id = self._reward_model(ctx, config)
        cache = None
        if config.cache:
            from posttrain.eval.cache import EvalCache

            cache = EvalCache(ctx.stage_dir / self.shared_caches[0], tasks_digest(config.tasks, config.task_paths), settings.to_dict())

        entries, samples, template_fingerprints, hits = {}, {}, {}, []
        evaluated = ctx.inputs.evaluated
        ctx.progress.start(ctx.name, len(evaluated))
        for i, model in enumerate(evaluated):
            name = model.name
            template_fingerprints[name] = tokenizer_fingerprint(ctx.store.load_tokenizer(model))
            entries[name], hit = self._evaluate_one(ctx, model, template_fingerprints[name], settings, cache, scorer, judge_id)
            if hit:
                hits.append(name)
            samples[name] = _samples(entries[name], judge_id if scorer is not None else None)
            if distributed.is_main():  # every rank holds the same samples; one writes them
                write_text_atomic(samples_path(ctx.stage_dir, name), samples_text(samples[name]))
            ctx.progress.update(i + 1, len(evaluated), f"{name} {'(from cache)' if hit else 'evaluated'}")
        ctx.progress.finish(f"(from cache: {', '.join(hits)})" if hits else "")
        if len(set(template_fingerprints.values())) > 1:
            raise StageError(f"models were evaluated with different tokenizers or chat templates: {template_fingerprints}; the comparison would not be fair")

        settings_record = settings.to_dict() | {"tokenizer_fingerprint": next(iter(template_fingerprints.values()))}
        pairwise = None
        if config.judge is not None:
            judge = make_judge(config.judge, ctx.store, ctx.inputs.models_read)
            pairwise = judge_models(judge, config.judge, samples, config.compare_to,
                                    ctx.stage_dir / JUDGE_CACHE_DIRNAME if config.cache else None, ctx.progress, f"{ctx.name} judge")
        models = {}
        for name, entry in entries.items():
            tasks = {task: TaskScores.model_validate(scores) for task, scores in entry["scores"].items()}
            rewards = [s.reward for s in samples[name]]
            if scorer is not None:
                mean, stderr = _mean_with_stderr(rewards)
                tasks[REWARD_TASK] = TaskScores(metrics={REWARD_METRIC: mean}, stderr={REWARD_METRIC: stderr}, n=len(rewards))
            models[name] = ModelScores(tasks=tasks, settings=dict(settings_record))  # beside each model's scores: the same for all
        evaluation = Evaluation(
            settings=settings_record,
            tasks=config.tasks,
            higher_is_better=self._higher_is_better(config.tasks, entries),
            groups=self._groups(config.tasks, config.task_paths),
            models=models,
            compare_to=config.compare_to if config.compare_to in entries else None,
            judge=config.reward_model,
            judge_fingerprint=judge_id,
            win_rates=self._win_rates(config.compare_to, samples) if scorer is not None else {},
            pairwise_judge=pairwise,
            examples=self._examples(config, samples),
            cache=CacheStats(hits=hits, misses=[n for n in entries if n not in hits]),
            # Lets `posttrain compare` show a model shared by several runs (e.g. the same SFT) once.
            model_fingerprints={model.name: model.fingerprint for model in evaluated},
        )
        metrics = {"models_evaluated": len(models), "models_from_cache": len(hits)}
        if pairwise is not None:
            metrics |= {"judge_verdicts": pairwise.cache.judged, "judge_verdicts_from_cache": pairwise.cache.from_cache}
        return StageResult(metrics=metrics, evaluation=evaluation)

    @staticmethod
    def _higher_is_better(tasks: list[str], entries: dict) -> dict:
        merged = {}
        for entry in entries.values():
            for task, metrics in entry["higher_is_better"].items():
                merged.setdefault(task, {}).update(metrics)
        return {task: merged[task] for task in tasks if task in merged}

    @staticmethod
    def _groups(tasks: list[str], task_paths=()) -> dict:
        local = metric_info(tasks, task_paths)
        return {task: {m: info["group"] for m, info in local[task].items()} if task in local else {"*": BENCHMARK_GROUP}
                for task in tasks}

    @staticmethod
    def _win_rates(baseline: str | None, samples: dict[str, list[Sample]]) -> dict[str, WinRate]:
        """Each judged model but base and the baseline against the baseline, on the same documents."""
        if baseline not in samples:
            return {}
        out = {}
        for name, own in samples.items():
            if name in (baseline, BASE):
                continue
            pairs = pair_samples(own, samples[baseline])
            if pairs is None:
                raise StageError(f"models '{name}' and '{baseline}' were not evaluated on the same documents; no win rate")
            w = win_rate([c.reward for c, _ in pairs], [b.reward for _, b in pairs], [c.response for c, _ in pairs], [b.response for _, b in pairs])
            out[WinRate.key(name, baseline)] = WinRate(candidate=name, baseline=baseline, **w)
        return out

    @staticmethod
    def _examples(config: EvalStageConfig, samples: dict[str, list[Sample]]) -> list[Example]:
        """The first `examples_per_task` held-out prompts of each task, with every model's response (and reward)."""
        by_task = {name: _by_task(own) for name, own in samples.items()}
        first = next(iter(by_task.values()))
        examples = []
        for task in config.tasks:
            for doc in first.get(task, [])[:config.examples_per_task]:
                responses = {}
                for name, tasks in by_task.items():
                    own = next((s for s in tasks.get(task, []) if s.prompt == doc.prompt), None)
                    if own is not None:
                        responses[name] = Response(response=own.response, reward=own.reward)
                examples.append(Example(task=task, prompt=doc.prompt, target=doc.target, responses=responses))
        return examples


def _samples(entry: dict, judge_id: str | None) -> list[Sample]:
    """A cache entry's generations as samples, each with its own reward. The entry stores a judge's rewards
    as one list in `_ordered_samples` order (the order they were scored in): this is the one place they
    are paired with their generations."""
    rows = _ordered_samples(entry["samples"])
    rewards = entry["rewards"][judge_id] if judge_id is not None else [None] * len(rows)
    if len(rewards) != len(rows):
        raise StageError(f"{entry.get('model')}: {len(rewards)} rewards for {len(rows)} generations; delete the eval cache and run again")
    return [Sample(task=r["task"], prompt=r["prompt"], response=r["response"], target=r.get("target"), reward=reward)
            for r, reward in zip(rows, rewards)]


def _by_task(samples: list[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in samples:
        out.setdefault(s.task, []).append(s)
    return out
