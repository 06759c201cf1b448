"""Iterative (on-policy) DPO: for R rounds, sample K answers per prompt from the current policy, score
them with the reward model, pair the best against the worst, and train DPO on those pairs.

Round r samples from the model round r-1 made (round 1 from the parent), so the pairs are the
policy's own answers: what it says now, judged, rather than a fixed log's. The DPO reference is
the stage's parent in every round (`reference: parent`, the default: every round is pulled towards
the same anchor) or the model the round starts from (`reference: round_start`).

Each round is cached and resumable: its sampled pairs are written first (`rounds/round-<r>/pairs.jsonl`,
so a resumed round trains on exactly the same pairs), its DPO training commits checkpoints like any
stage's, and its merged model is committed to `rounds/round-<r>/model/` with `round.json` (the round's
figures, tied to the stage's fingerprint). A killed run resumes at the first unfinished round, from its
last checkpoint. After the last round the final policy is sampled once more, so the curves hold the
reward and the KL from the parent of every model: round 0 (the parent) to round R.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from posttrain.atomic import atomic_directory, is_committed, write_json_atomic, write_text_atomic
from posttrain.data.accounting import DataAccounting
from posttrain.errors import StageError
from posttrain.rl.judged import RewardJudgedConfig, RewardJudgedStage
from posttrain.stage import PreparedData, Role, StageContext, StageResult, setting_error
from posttrain.stages.dpo import DPOStage, DPOStageConfig

if TYPE_CHECKING:
    from posttrain.model_store import ModelRef

ROUNDS_DIRNAME = "rounds"


class IterativeDPOStageConfig(DPOStageConfig, RewardJudgedConfig):
    held_out_loss = False
    held_out_hint = ": its curves are the reward and KL of the policy's own answers, round by round"

    rounds: int = Field(3, gt=0, description="Sample-score-train rounds.")
    samples_per_prompt: int = Field(4, ge=2, description="Answers sampled per prompt each round (K); the best and the worst make the pair.")
    prompts_per_round: int | None = Field(None, gt=0, description="Prompts drawn (seeded) each round; None: every prompt every round.")
    max_new_tokens: int = Field(32, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    min_reward_gap: float = Field(0.0, ge=0, description="A prompt gives a pair only when best minus worst score exceeds this.")
    missing_eos_penalty: float | None = Field(1.0, ge=0, description="Subtract from the score of an answer cut off at max_new_tokens.")
    reference: Literal["parent", "round_start"] = Field("parent", description=(
        "DPO reference in every round: the stage's parent, or the model the round starts from."))

    @model_validator(mode="after")
    def _no_quantized_rounds(self):
        if self.lora is not None and self.lora.load_in_4bit:
            raise setting_error("lora.load_in_4bit", "iterative_dpo merges each round's adapter into the next round's model, which "
                                "4-bit weights cannot take; use lora without load_in_4bit")
        return self


class IterativeDPOStage(RewardJudgedStage, DPOStage):
    kind = "iterative_dpo"
    Config = IterativeDPOStageConfig

    def run(self, ctx: StageContext) -> StageResult:
        from posttrain.model_store import ModelRef
        from posttrain.training import save_stage_model

        config: IterativeDPOStageConfig = ctx.config
        scorer = self.scorer(ctx)  # gated before any sampling: a weak judge makes every pair noise
        tokenizer = ctx.store.load_tokenizer(ctx.parent)
        anchor = ctx.store.load_model(ctx.parent).requires_grad_(False)  # the KL of every round is measured from it
        prompts = [e["prompt"] for e in ctx.data.examples]
        history: list[dict] = []
        current: ModelRef = ctx.parent
        for number in range(1, config.rounds + 1):
            round_dir = ctx.stage_dir / ROUNDS_DIRNAME / f"round-{number}"
            done = _finished_round(round_dir, ctx.fingerprint)
            if done is None:
                done = self._round(ctx, number, round_dir, current, anchor, scorer, tokenizer, _round_prompts(prompts, config, ctx.seed, number))
            else:
                ctx.progress.message(f"  round {number}: done earlier (reward {done['sampled']['reward']:.3f}, kl {done['sampled']['kl']:.3f})")
            history.append(done)
            current = ModelRef(f"{ctx.name}/round-{number}", str(round_dir / "model"), Role.POLICY, f"{ctx.fingerprint}-round-{number}")

        final = ctx.store.load_model(current)
        after = self._sample(ctx, final, anchor, scorer, tokenizer, _round_prompts(prompts, config, ctx.seed, config.rounds + 1), config.rounds + 1)
        ctx.progress.message(f"  after round {config.rounds}: reward {after.stats['reward']:.3f}, kl {after.stats['kl']:.3f}")
        save_stage_model(ctx, final, tokenizer)

        # Round r's samples came from the model of round r-1: x is the number of rounds trained.
        measured = [h["sampled"] for h in history] + [after.stats]
        curves = {key: [[r, m[key]] for r, m in enumerate(measured)] for key in ("reward", "reward_best", "kl", "eos_rate", "response_words")}
        curves["pairs"] = [[h["round"], h["sampled"]["pairs"]] for h in history]
        curves["train_loss"] = [[h["round"], h["train_loss"]] for h in history if h.get("train_loss") is not None]
        metrics = {
            "rounds": config.rounds, "prompts": len(prompts), "reward_model": ctx.inputs.judge.name, "reference": config.reference,
            "reward_first": measured[0]["reward"], "reward_last": measured[-1]["reward"],
            "kl_last": measured[-1]["kl"], "kl_max": max(m["kl"] for m in measured),
            "pairs_total": sum(h["sampled"]["pairs"] for h in history),
        }
        accounting = ctx.data.accounting
        accounting.details["rounds"] = [{"round": h["round"], "pairs": h["sampled"]["pairs"], "no_pair": h["no_pair"]} for h in history]
        return StageResult(metrics=metrics, curves=curves, data=accounting)

    # -- one round ---------------------------------------------------------------------------------
    def _round(self, ctx: StageContext, number: int, round_dir: Path, start: ModelRef, anchor, scorer, tokenizer,
               prompts: list[list[dict]]) -> dict:
        from transformers import set_seed

        from posttrain.training import discard_checkpoints, final_metrics, train

        config: IterativeDPOStageConfig = ctx.config
        round_ctx = replace(ctx, stage_dir=round_dir, fingerprint=f"{ctx.fingerprint}-round-{number}",
                            inputs=replace(ctx.inputs, parent=start))
        pairs_file = round_dir / "pairs.jsonl"
        sampled_file = round_dir / "sampled.json"
        if pairs_file.is_file() and sampled_file.is_file() and json.loads(sampled_file.read_text()).get("fingerprint") == round_ctx.fingerprint:
            pairs = [json.loads(line) for line in pairs_file.read_text().splitlines()]
            sampled = json.loads(sampled_file.read_text())
            ctx.progress.message(f"  round {number}: resuming with its {len(pairs)} sampled pairs")
        else:
            policy = ctx.store.load_model(start)
            found = self._sample(ctx, policy, anchor, scorer, tokenizer, prompts, number)
            del policy
            pairs = found.pairs
            sampled = {"fingerprint": round_ctx.fingerprint, "stats": found.stats, "no_pair": found.no_pair}
            write_text_atomic(pairs_file, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
            write_json_atomic(sampled_file, sampled)
            ctx.progress.message(f"  round {number}: reward {found.stats['reward']:.3f} (best of {config.samples_per_prompt} "
                                 f"{found.stats['reward_best']:.3f}), kl {found.stats['kl']:.3f}, {len(pairs)} pairs")
        if not pairs:
            raise StageError(f"stage '{ctx.name}' round {number}: no prompt gave a pair ({sampled['no_pair']}); sample more answers "
                             f"(samples_per_prompt), raise temperature, or lower min_reward_gap")

        accounting = DataAccounting(f"{ctx.name} round {number} samples", rows_read=len(pairs), rows_used=len(pairs), examples_used=len(pairs))
        round_ctx = replace(round_ctx, data=PreparedData(pairs, accounting))
        reference = ctx.parent if config.reference == "parent" else start
        set_seed(ctx.seed + number)  # a LoRA adapter's initial weights too: a resumed round starts as an uninterrupted one
        trainer = self.build_trainer(round_ctx, reference=reference)
        history = train(trainer, round_ctx)
        model = trainer.model.merge_and_unload() if hasattr(trainer.model, "peft_config") else trainer.model
        with atomic_directory(round_dir / "model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        discard_checkpoints(round_ctx)
        record = {"round": number, "fingerprint": ctx.fingerprint, "sampled": sampled["stats"], "no_pair": sampled["no_pair"],
                  "train_loss": final_metrics(history).get("train_loss")}
        write_json_atomic(round_dir / "round.json", record)
        return record

    def _sample(self, ctx: StageContext, policy, anchor, scorer, tokenizer, prompts, number: int):
        """Round `number`'s answers, seeded by the recipe's seed and the round alone: a resumed run samples
        what an uninterrupted one would have."""
        import torch

        from posttrain.rl.onpolicy_pairs import sample_round

        config: IterativeDPOStageConfig = ctx.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(ctx.seed * 1_000_003 + number)
            return sample_round(policy, anchor, tokenizer, scorer, prompts, config.samples_per_prompt, max_length=config.max_length,
                                max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                                missing_eos_penalty=config.missing_eos_penalty, min_reward_gap=config.min_reward_gap,
                                batch_size=max(config.batch_size, config.samples_per_prompt))


def _round_prompts(prompts: list, config: IterativeDPOStageConfig, seed: int, number: int) -> list:
    """The prompts round `number` samples: all of them, or a seeded draw per round."""
    if config.prompts_per_round is None or config.prompts_per_round >= len(prompts):
        return prompts
    return random.Random(f"{seed}-{number}").sample(prompts, config.prompts_per_round)


def _finished_round(round_dir: Path, fingerprint: str) -> dict | None:
    """A round committed by this stage's fingerprint: its record; otherwise None (run it)."""
    record = round_dir / "round.json"
    if not (is_committed(round_dir / "model") and record.is_file()):
        return None
    done = json.loads(record.read_text())
    return done if done.get("fingerprint") == fingerprint else None
