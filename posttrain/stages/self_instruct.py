"""self_instruct: a teacher model writes instruction data from seed tasks (Wang et al. 2022, arXiv:2212.10560).

A `data` stage: its rows (`<run>/<stage>/data.jsonl`, chat `messages`) are what a later stage trains
on with `data: stage:<name>`. It works in rounds; each round
  1. asks the teacher for new instructions, each request listing tasks sampled from the seed tasks
     and the instructions generated so far;
  2. drops instructions that are empty, too short or too long, about images, files and the like, or
     that start with punctuation or a non-Latin letter, and those whose ROUGE-L with a seed task or an
     instruction already generated is `similarity_threshold` (0.7) or more;
  3. asks whether each remaining one is a classification task, then writes one instance for it:
     output first for classification tasks (a class label, then an input of that class), input first
     otherwise (an input, then the teacher's answer to the instruction and input);
  4. drops instances with an empty output, an output that repeats the input or the instruction, or one
     cut off at the token limit (`drop_cut_off`).
Every candidate (one generated instruction) is kept or dropped with one reason: `<stage>/candidates.jsonl`
lists them all, and the stage's metrics and data accounting count them (kept + dropped = candidates).

A round is appended to `<stage>/generation/candidates.jsonl` and committed with a marker line once it
is complete; a killed run resumes after the last committed round and, asking the same questions with
the same seeds, writes the same rows as an uninterrupted one (posttrain.self_instruct.ledger).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from posttrain.eval.judge import EndpointSettings
from posttrain.stage import PreparedData, Role, Stage, StageConfig, StageContext, StageInputs, StageResult, setting_error

ACCOUNTING_FILENAME = "candidates.jsonl"
HELD_OUT_FILENAME = "held_out.jsonl"
GENERATION_DIRNAME = "generation"


class SelfInstructConfig(StageConfig):
    teacher: str | None = Field(None, description="The model that writes the data: base, an earlier policy stage, a model directory, a hub id "
                                                  "(org/name) or a .gguf file (a path or package:<pkg>/<file>).")
    endpoint: EndpointSettings | None = Field(None, description="Or an OpenAI-compatible endpoint: base_url, model, api_key_env (the name of the "
                                                                "variable holding the key, never the key), timeout_s, max_retries, concurrency.")
    seed_tasks: str = Field(description="Seed tasks: a file in the self-instruct seed format (instruction, instances: [{input, output}], "
                                        "is_classification) or any SFT data (each single-turn demonstration is a task).")
    num_instructions: int = Field(gt=0, description="Instructions to keep (each becomes one row), held-out rows included.")
    held_out: int = Field(0, ge=0, description="The last N kept rows go to held_out.jsonl instead of data.jsonl (to measure a student on).")
    max_candidates: int | None = Field(None, gt=0, description="Stop after this many candidates even if fewer were kept (default 4 x num_instructions).")
    batch_size: int = Field(8, gt=0, description="New-instruction requests per round; also the local teacher's generation batch.")
    prompt_tasks: int = Field(8, gt=0, description="Tasks listed in each new-instruction request (the paper: 8).")
    prompt_seed_tasks: int = Field(6, ge=0, description="Of those, seed tasks; the rest are generated ones, once there are (the paper: 6).")
    few_shot: int = Field(4, gt=0, description="Seed tasks shown as examples when asking for classification and instances.")
    similarity_threshold: float = Field(0.7, gt=0, le=1, description="Drop an instruction whose ROUGE-L F-measure with a seed or kept one reaches this.")
    min_instruction_words: int = Field(3, ge=1)
    max_instruction_words: int = Field(150, ge=1)
    temperature: float = Field(0.7, ge=0, description="Sampling temperature of new instructions (local teacher; 0: greedy). Endpoint requests are at 0.")
    max_instruction_tokens: int = Field(48, gt=0, description="Longest new instruction the teacher may write.")
    max_input_tokens: int = Field(64, gt=0, description="Longest instance input (or class label and input) the teacher may write.")
    max_output_tokens: int = Field(128, gt=0, description="Longest output the teacher may write.")
    generate_inputs: bool = Field(True, description="Ask for an input before answering a non-classification task (the paper's input-first "
                                                    "step); false: the teacher answers the instruction alone (for a teacher whose inputs are noise).")
    drop_cut_off: bool = Field(True, description="Drop outputs that reached max_output_tokens (unfinished answers teach rambling).")

    @field_validator("teacher")
    @classmethod
    def _gguf_teacher_readable(cls, value: str | None) -> str | None:
        from posttrain.errors import PosttrainError
        from posttrain.gguf_import import check_base_file, is_gguf_name

        if value is not None and is_gguf_name(value):
            try:
                check_base_file(value)  # header and metadata only: a missing or truncated file is one line now
            except PosttrainError as e:
                raise setting_error("teacher", str(e)) from None
        return value

    @model_validator(mode="after")
    def _one_teacher(self):
        if (self.teacher is None) == (self.endpoint is None):
            raise setting_error("teacher", "name one teacher: teacher: <base, a stage, a model directory, a hub id or a .gguf file>, "
                                           "or endpoint: {base_url, model, api_key_env}" + ("" if self.teacher is None else ", not both"))
        if self.held_out >= self.num_instructions:
            raise setting_error("held_out", f"holds out {self.held_out} of {self.num_instructions} rows, leaving none to train on; "
                                            "lower it or raise num_instructions")
        if self.max_instruction_words < self.min_instruction_words:
            raise setting_error("max_instruction_words", f"is below min_instruction_words ({self.min_instruction_words})")
        if self.max_candidates is not None and self.max_candidates < self.num_instructions:
            raise setting_error("max_candidates", f"is below num_instructions ({self.num_instructions}): the target could never be reached")
        return self


def _is_gguf(name: str | None) -> bool:
    from posttrain.gguf_import import is_gguf_name

    return name is not None and is_gguf_name(name)


class SelfInstructStage(Stage):
    kind = "self_instruct"
    role = Role.DATA
    Config = SelfInstructConfig

    @classmethod
    def inputs(cls, config: SelfInstructConfig) -> StageInputs:
        # A .gguf teacher is not a model the store resolves (only a base may be one): it is imported by
        # this stage and its content digest is part of the fingerprint (fingerprint_inputs).
        models = (config.teacher,) if config.teacher is not None and not _is_gguf(config.teacher) else ()
        return StageInputs(data=(config.seed_tasks,), models_read=models,
                           keys={"parent": "from", "evaluates": "models", "judge": "reward_model", "data": "seed_tasks", "models_read": "teacher"})

    @classmethod
    def fingerprint_inputs(cls, config: SelfInstructConfig) -> dict:
        found = super().fingerprint_inputs(config)
        if _is_gguf(config.teacher):
            from posttrain.gguf_import import file_digest, gguf_file

            found["teacher_gguf"] = file_digest(gguf_file(config.teacher))
        return found

    @classmethod
    def prepare_data(cls, config: SelfInstructConfig, data_files: dict[str, Path], seed: int) -> PreparedData:
        from posttrain.data.accounting import DataAccounting
        from posttrain.self_instruct.seeds import read_seed_tasks

        tasks = read_seed_tasks(config.seed_tasks, data_files)
        accounting = DataAccounting(config.seed_tasks, rows_read=len(tasks), rows_used=len(tasks), examples_used=len(tasks))
        return PreparedData(examples=[], accounting=accounting, extras={"seed_tasks": tasks})

    def run(self, ctx: StageContext) -> StageResult:
        from posttrain import hooks
        from posttrain.atomic import write_text_atomic
        from posttrain.data.accounting import DataAccounting
        from posttrain.self_instruct.filters import INSTANCE_REASONS, NoveltyPool
        from posttrain.self_instruct.ledger import CandidateLedger

        config: SelfInstructConfig = ctx.config
        seeds = ctx.data.extras["seed_tasks"]
        teacher = self._teacher(ctx)
        ledger = CandidateLedger(ctx.stage_dir / GENERATION_DIRNAME, ctx.fingerprint)
        candidates, rounds = ledger.open()
        pool = NoveltyPool([t.instruction for t in seeds], config.similarity_threshold)
        for c in candidates:  # the pool as it was: every instruction that passed the instruction filters, in order
            if c["reason"] is None or c["reason"] in INSTANCE_REASONS:
                pool.add(c["instruction"])
        if rounds:
            ctx.progress.message(f"  resuming after round {rounds}: {sum(c['kept'] for c in candidates)} kept of {len(candidates)} candidates")
        limit = config.max_candidates or 4 * config.num_instructions
        ctx.progress.start(ctx.name, config.num_instructions)
        try:
            while (kept := sum(c["kept"] for c in candidates)) < config.num_instructions and len(candidates) < limit:
                rounds += 1
                size = min(config.batch_size, config.num_instructions - kept, limit - len(candidates))
                batch = _Round(config, seeds, candidates, pool, teacher, ctx.seed, rounds).run(size)
                ledger.commit_round(rounds, batch)
                candidates.extend(batch)
                ctx.progress.update(sum(c["kept"] for c in candidates), config.num_instructions, f"{len(candidates)} candidates")
                hooks.after_step(ctx.name, rounds)
        except BaseException:
            ctx.progress.finish(f"stopped after round {rounds}; {len(candidates)} candidates committed, resumed by the next run", stopped=True)
            raise
        kept_rows = [c for c in candidates if c["kept"]]
        dropped = Counter(c["reason"] for c in candidates if not c["kept"])
        ctx.progress.finish(f"{len(kept_rows)} kept of {len(candidates)} candidates in {rounds} rounds")
        if len(kept_rows) <= config.held_out:
            from posttrain.errors import StageError

            reasons = ", ".join(f"{r} {n}" for r, n in dropped.most_common()) or "none"
            raise StageError(f"self_instruct '{ctx.name}': the teacher's {len(candidates)} candidates left {len(kept_rows)} rows "
                             f"(dropped: {reasons}), not enough{' beside held_out' if config.held_out else ''}; see "
                             f"{ctx.stage_dir / GENERATION_DIRNAME / ACCOUNTING_FILENAME}, raise max_candidates or use a stronger teacher")
        if len(kept_rows) < config.num_instructions:
            ctx.progress.message(f"[yellow]  {ctx.name}: kept {len(kept_rows)} of the {config.num_instructions} instructions asked for "
                                 f"(max_candidates {limit} reached)[/]")
        split = len(kept_rows) - config.held_out
        for i, c in enumerate(kept_rows):
            c["held_out"] = i >= split
        write_text_atomic(ctx.stage_dir / ACCOUNTING_FILENAME, "".join(_json_line(c) for c in candidates))
        if config.held_out:
            write_text_atomic(ctx.stage_dir / HELD_OUT_FILENAME, "".join(_json_line(_row(c)) for c in kept_rows[split:]))
        write_text_atomic(ctx.data_output, "".join(_json_line(_row(c)) for c in kept_rows[:split]))
        ledger.remove()

        accounting = DataAccounting(f"self_instruct teacher {teacher.label}", rows_read=len(candidates), rows_used=len(kept_rows),
                                    dropped=dropped, details={"held_out": config.held_out})
        accounting.finish(kept_rows[:split])
        metrics = {
            "teacher": teacher.label,
            "seed_tasks": len(seeds),
            "rounds": rounds,
            "candidates": len(candidates),
            "kept": len(kept_rows),
            "dropped": sum(dropped.values()),
            "dropped_by_reason": dict(dropped.most_common()),
            "rows_written": split,
            "held_out_rows": config.held_out,
            "classification_kept": sum(bool(c["is_classification"]) for c in kept_rows),
            "target_reached": len(kept_rows) >= config.num_instructions,
            "teacher_requests": teacher.tokens["requests"],
            "teacher_prompt_tokens": teacher.tokens["prompt_tokens"],
            "teacher_completion_tokens": teacher.tokens["completion_tokens"],
        }
        return StageResult(metrics=metrics, data=accounting)

    @staticmethod
    def _teacher(ctx: StageContext):
        from posttrain.self_instruct.teachers import EndpointTeacher, LocalTeacher

        config: SelfInstructConfig = ctx.config
        if config.endpoint is not None:
            import os

            from posttrain.errors import StageError

            env = config.endpoint.api_key_env
            if env and not os.environ.get(env):
                raise StageError(f"{ctx.name}.endpoint.api_key_env: environment variable {env} is not set (or empty); export the "
                                 "teacher endpoint's API key in it (it is read from there and never written)")
            return EndpointTeacher(config.endpoint)
        if _is_gguf(config.teacher):
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from posttrain.gguf_import import ensure_imported, gguf_file

            path = gguf_file(config.teacher)
            directory = ctx.store.layout.imported_dir(path.stem)  # shared with a .gguf base of the same file
            ctx.progress.message(f"  teacher {config.teacher}: imported into {directory} (once per run directory)")
            ensure_imported(path, directory, config.teacher)
            model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
            return LocalTeacher(model, AutoTokenizer.from_pretrained(directory), config.teacher, config.batch_size)
        ref = ctx.inputs.models_read[config.teacher]
        return LocalTeacher(ctx.store.load_model(ref), ctx.store.load_tokenizer(ref), ref.name, config.batch_size)


class _Round:
    """One round of generation: new instructions, their filters, their instances."""

    def __init__(self, config: SelfInstructConfig, seeds, candidates: list[dict], pool, teacher, seed: int, number: int):
        self.config, self.seeds, self.pool, self.teacher, self.number = config, seeds, pool, teacher, number
        self.generated = [c["instruction"] for c in candidates if c["kept"]]
        self.rng = random.Random(f"self_instruct|{seed}|{number}")  # a round's choices depend on nothing but its number
        self.seed = seed * 1_000_003 + number * 1_009

    def run(self, size: int) -> list[dict]:
        from posttrain.self_instruct import filters, prompts

        config = self.config
        requests = [prompts.instruction_prompt(self._listed_tasks()) for _ in range(size)]
        replies = self.teacher.generate(requests, config.max_instruction_tokens, config.temperature, seed=self.seed)
        batch = []
        for reply in replies:
            instruction = prompts.read_instruction(reply.text)
            candidate = {"round": self.number, "instruction": instruction, "input": "", "output": "", "is_classification": None,
                         "kept": False, "reason": filters.instruction_problem(instruction, config.min_instruction_words,
                                                                            config.max_instruction_words)}
            if candidate["reason"] is None:
                similarity = self.pool.most_similar(instruction)
                candidate.update(rouge_l=round(similarity.score, 4), most_similar=similarity.closest)
                if self.pool.is_novel(similarity):
                    self.pool.add(instruction)  # later candidates of this round are compared with it too
                else:
                    candidate["reason"] = filters.SIMILAR
            batch.append(candidate)
        self._instances([c for c in batch if c["reason"] is None])
        return batch

    def _listed_tasks(self) -> list[str]:
        config = self.config
        machine = min(len(self.generated), config.prompt_tasks - min(config.prompt_seed_tasks, config.prompt_tasks))
        human = min(len(self.seeds), config.prompt_tasks - machine)
        tasks = [t.instruction for t in self.rng.sample(self.seeds, human)] + self.rng.sample(self.generated, machine)
        self.rng.shuffle(tasks)
        return tasks

    def _examples(self, classification: bool | None) -> list:
        """Seed tasks to show: of one kind (classification or not) when there are, else any; balanced when `classification` is None."""
        k = self.config.few_shot
        if classification is None:
            yes = [t for t in self.seeds if t.is_classification]
            no = [t for t in self.seeds if not t.is_classification]
            chosen = self.rng.sample(yes, min(len(yes), k // 2)) + self.rng.sample(no, min(len(no), k - min(len(yes), k // 2)))
            self.rng.shuffle(chosen)
            return chosen
        same = [t for t in self.seeds if t.is_classification == classification] or list(self.seeds)
        return self.rng.sample(same, min(len(same), k))

    def _instances(self, candidates: list[dict]) -> None:
        from posttrain.self_instruct import filters, prompts

        if not candidates:
            return
        config, teacher = self.config, self.teacher
        asked = [prompts.classification_prompt(c["instruction"], self._examples(None)) for c in candidates]
        for c, reply in zip(candidates, teacher.generate(asked, 4, 0.0, seed=self.seed + 1)):
            c["is_classification"] = prompts.read_yes_no(reply.text)
        asking = [c for c in candidates if c["is_classification"] or config.generate_inputs]
        asked = [prompts.label_prompt(c["instruction"], self._examples(True)) if c["is_classification"]
                 else prompts.input_prompt(c["instruction"], self._examples(False)) for c in asking]
        cut = {}
        for c, reply in zip(asking, teacher.generate(asked, config.max_input_tokens, 0.0, seed=self.seed + 2) if asked else []):
            if c["is_classification"]:  # output first: the label is the output, the input was written for it
                c["output"], c["input"] = prompts.read_label_and_input(reply.text)
                cut[id(c)] = False
            else:
                c["input"] = prompts.read_input(reply.text)
        open_ended = [c for c in candidates if not c["is_classification"]]
        asked = [prompts.user_message(c["instruction"], c["input"]) for c in open_ended]
        for c, reply in zip(open_ended, teacher.generate(asked, config.max_output_tokens, 0.0, seed=self.seed + 3) if asked else []):
            c["output"] = reply.text
            cut[id(c)] = reply.cut_off
        for c in candidates:
            c["reason"] = filters.instance_problem(c["instruction"], c["input"], c["output"], cut[id(c)], config.drop_cut_off)
            c["kept"] = c["reason"] is None


def _row(candidate: dict) -> dict:
    from posttrain.self_instruct.prompts import user_message

    return {"messages": [{"role": "user", "content": user_message(candidate["instruction"], candidate["input"])},
                         {"role": "assistant", "content": candidate["output"]}]}


def _json_line(value: dict) -> str:
    import json

    return json.dumps(value, ensure_ascii=False) + "\n"
