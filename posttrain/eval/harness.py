"""lm-eval glue: evaluate one in-memory model on local suites and lm-eval tasks.

Every model of a run goes through `evaluate_model` with the same `EvalSettings`, so the
chat template, generation settings and seeds are identical and recorded beside the scores.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from dataclasses import asdict, dataclass

from posttrain.eval.registry import task_manager_for
from posttrain.eval.suites import find_tasks, lm_eval_task_config, load_task_spec


@dataclass(frozen=True)
class EvalSettings:
    max_new_tokens: int
    batch_size: int
    system_prompt: str | None
    num_fewshot: int
    seed: int
    apply_chat_template: bool = True
    decoding: str = "greedy"
    limit: int | None = None  # documents per task (quick checks); None: all

    def to_dict(self) -> dict:
        return asdict(self)


@contextlib.contextmanager
def _quiet_lm_eval():
    """For the duration of one evaluation: lm-eval logs errors only, and skips its provenance
    probes. Everything changed is put back on the way out (tqdm's bars are off already: the
    CLI's environment defaults set TQDM_DISABLE before tqdm is imported)."""
    import lm_eval.evaluator

    logger = logging.getLogger("lm_eval")
    level = logger.level
    # lm-eval shells out to `git describe` and torch's collect_env for its provenance
    # record; neither says anything about our models, and together they cost ~1 s per call.
    patched = {"get_git_commit_hash": lambda: None, "add_env_info": lambda results: None}
    originals = {name: getattr(lm_eval.evaluator, name) for name in patched}
    logger.setLevel(logging.ERROR)
    for name, replacement in patched.items():
        setattr(lm_eval.evaluator, name, replacement)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(lm_eval.evaluator, name, original)
        logger.setLevel(level)


def evaluate_model(model, tokenizer, task_names: list[str], settings: EvalSettings, task_paths=()) -> dict:
    """Scores per task: {task: {metric: value, metric_stderr: value, n: count}} and per-document samples.
    `task_paths`: directories of the user's own suites and lm-eval task YAMLs (lm-eval's include path)."""
    with _quiet_lm_eval():
        return _evaluate_model(model, tokenizer, task_names, settings, task_paths)


def _evaluate_model(model, tokenizer, task_names: list[str], settings: EvalSettings, task_paths=()) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    files = find_tasks(task_paths)
    local = files.suites
    stop = [tokenizer.eos_token] if tokenizer.eos_token else []
    tasks = [
        lm_eval_task_config(load_task_spec(local[name]), settings.max_new_tokens, stop) if name in local else name
        for name in task_names
    ]
    model.eval()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=settings.batch_size,
              max_length=min(tokenizer.model_max_length, 4096))
    # HFLM's generation bar ignores TQDM_DISABLE.
    lm.generate_until = functools.partial(lm.generate_until, disable_tqdm=True)
    from posttrain import distributed

    here = distributed.world()
    if here.distributed:
        # lm-eval's own data parallelism: each rank generates for its share of the documents and rank 0 gathers
        # them. HFLM switches it off for a model object; every rank holds the same model, so it is switched back on.
        # cpu=True on CPUs: without it, in a process where no Trainer has set accelerate's state up (every training
        # stage cached, or an eval-only recipe), accelerate sees no GPU and no distributed type, its gather returns
        # the rank's own tensor, and lm-eval's padding count fails ("'int' object is not iterable").
        from accelerate import Accelerator

        lm._rank, lm._world_size, lm.accelerator = here.rank, here.size, Accelerator(cpu=model.device.type == "cpu")
    only_local = all(name in local for name in task_names)
    output = lm_eval.simple_evaluate(
        model=lm,
        tasks=tasks,
        # Indexing lm-eval's ~15k built-in tasks takes ~30 s: skipped when every task is ours, and
        # built once per process otherwise (validating the recipe already did).
        task_manager=task_manager_for(task_names, files),
        num_fewshot=settings.num_fewshot if not only_local else None,
        apply_chat_template=settings.apply_chat_template,
        system_instruction=settings.system_prompt,
        fewshot_as_multiturn=settings.num_fewshot > 0,
        limit=settings.limit,
        log_samples=True,
        bootstrap_iters=1000,
        random_seed=settings.seed, numpy_random_seed=settings.seed,
        torch_random_seed=settings.seed, fewshot_random_seed=settings.seed,
    )
    if here.distributed:  # only rank 0 has the gathered results: every rank gets its reading of them
        return distributed.broadcast(_read_output(output, task_names) if here.is_main else None)
    return _read_output(output, task_names)


def _read_output(output: dict, task_names: list[str]) -> dict:
    scores, samples = {}, {}
    for task in task_names:
        raw = output["results"][task]
        n = output["n-samples"][task]["effective"]
        task_scores = {"n": n}
        for key, value in raw.items():
            if "," not in key or key.startswith("alias"):
                continue
            metric = key.split(",")[0]
            task_scores[metric] = None if value == "N/A" else value
        scores[task] = task_scores
        # In document order: several ranks' samples arrive rank by rank (one process: already in order).
        samples[task] = [
            {"prompt": s["doc"].get("prompt", s["arguments"][0][0]), "response": _response_text(s), "target": str(s["target"])}
            for s in sorted(output["samples"][task], key=lambda s: s["doc_id"])
        ]
    return {"scores": scores, "samples": samples, "higher_is_better": output["higher_is_better"]}


def _response_text(sample: dict) -> str:
    """What the model answered, as text, for every lm-eval output type: the generation
    (generate_until); the likeliest continuation (loglikelihood, multiple_choice: one
    (log-likelihood, is_greedy) pair per candidate); nothing (loglikelihood_rolling scores the
    document itself)."""
    responses = sample["filtered_resps"]
    if responses and isinstance(responses[0], str):
        return responses[0]
    scored = [(r[0], i) for i, r in enumerate(responses) if isinstance(r, (tuple, list)) and r]
    if not scored:
        return ""
    _, best = max(scored)
    arguments = sample["arguments"][best]
    return arguments[1] if len(arguments) > 1 and isinstance(arguments[1], str) else ""
