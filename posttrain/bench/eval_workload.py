"""The eval workload in its worker process: greedy answers to the same held-out prompts through posttrain's eval
generation path and through lm-eval's default HF path, measured the same way, from outside both.

Both sides end in lm-eval's `HFLM.generate_until`. posttrain's side is what its eval stage runs:
`posttrain.eval.harness.evaluate_model` on the model the stage loads, one shipped suite, the stage's default batch
size and max_new_tokens, the first `prompts` documents (`limit`). The baseline is benchmarks/lm_eval_generate.py:
`HFLM(pretrained=MODEL_DIR)` with lm-eval's defaults, given the same prompts as chat-templated requests.

A wrapper around `HFLM.generate_until` times each call (wall and CPU) and keeps every request's context and answer;
a wrapper around `HFLM._model_generate` counts what every row of a batch generated (`generated_tokens`), so neither
left padding nor the steps a finished row idles through while the rest of its batch generates are counted.
Model loading, building lm-eval's task and scoring its answers are outside the timed call.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path


def generated_tokens(row: list[int], stop_ids: set[int]) -> int:
    """Tokens one row generated, up to and including its first stop token (all of them when none came). The
    workload's requests stop at EOS only, so the stop tokens are the EOS ids of the tokenizer and the model."""
    for position, token in enumerate(row):
        if token in stop_ids:
            return position + 1
    return len(row)


def _ids(value) -> set[int]:
    return set(value) if isinstance(value, (list, tuple)) else {value} if value is not None else set()


class GenerationRecorder:
    """What lm-eval's HFLM generated while installed: per `generate_until` call its wall and CPU seconds, every
    request's (context, answer), and the generated tokens."""

    def __init__(self):
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []
        self.answers: list[list[str]] = []
        self.tokens = 0

    @contextlib.contextmanager
    def installed(self):
        from lm_eval.models.huggingface import HFLM

        generate_until, model_generate = HFLM.generate_until, HFLM._model_generate
        recorder = self

        def timed_generate_until(lm, requests, *args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            answers = generate_until(lm, requests, *args, **kwargs)
            recorder.seconds.append(time.perf_counter() - wall)
            recorder.cpu_seconds.append(time.process_time() - cpu)
            recorder.answers += [[request.args[0], answer] for request, answer in zip(requests, answers)]
            return answers

        def counted_model_generate(lm, *args, **kwargs):
            output = model_generate(lm, *args, **kwargs)
            context = kwargs["context"] if "context" in kwargs else args[0]
            stop = _ids(lm.tokenizer.eos_token_id) | _ids(lm.model.generation_config.eos_token_id)
            recorder.tokens += sum(generated_tokens(row, stop) for row in output[:, context.shape[1]:].tolist())
            return output

        # On the class: posttrain's harness binds `lm.generate_until` from it when it builds its HFLM.
        HFLM.generate_until, HFLM._model_generate = timed_generate_until, counted_model_generate
        try:
            yield self
        finally:
            HFLM.generate_until, HFLM._model_generate = generate_until, model_generate


def posttrain_generation(spec: dict):
    """posttrain's eval stage on one model: (a function that evaluates, its batch size, its precision)."""
    from posttrain.eval.harness import EvalSettings, evaluate_model
    from posttrain.eval.stage import EvalStageConfig
    from posttrain.model_store import ModelStore
    from posttrain.stage import BASE

    store = ModelStore(Path(spec["work_dir"]), base=spec["model_dir"], seed=spec["seed"])
    model, tokenizer = store.load_model(BASE), store.load_tokenizer(BASE)  # what EvalStage._evaluate_one loads
    batch_size = EvalStageConfig.model_fields["batch_size"].default
    settings = EvalSettings(max_new_tokens=spec["max_new_tokens"], batch_size=batch_size, system_prompt=None, num_fewshot=0,
                            seed=spec["seed"], limit=spec["prompts"])
    return (lambda: evaluate_model(model, tokenizer, [spec["task"]], settings)), batch_size, model.dtype


def baseline_generation(spec: dict):
    """The plain lm-eval script: (a function that generates, its batch size, its precision)."""
    from posttrain.bench.worker import baseline_script

    script = baseline_script(spec)
    lm = script.load_model(spec["model_dir"])
    prompts = script.read_prompts(spec["data_file"])
    return (lambda: script.generate(lm, prompts, spec["max_new_tokens"])), lm.batch_size, lm.model.dtype


def measure(spec: dict) -> dict:
    import torch

    from posttrain.bench.worker import threads

    started = time.perf_counter()
    recorder = GenerationRecorder()
    with recorder.installed():
        generate, batch_size, dtype = posttrain_generation(spec) if spec["side"].startswith("posttrain") else baseline_generation(spec)
        ready = time.perf_counter()
        generate()
    return {
        "side": spec["side"], "workload": "eval", "steps": len(recorder.seconds), "step_seconds": recorder.seconds,
        "step_cpu_seconds": recorder.cpu_seconds, "setup_seconds": ready - started, "tokens": recorder.tokens, "losses": [],
        "precision": {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype)),
        "batch_size": batch_size, "prompts": len(recorder.answers), "max_new_tokens": spec["max_new_tokens"],
        "answers": recorder.answers, "threads": threads(),
    }
