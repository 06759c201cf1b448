"""The pipeline walks a recipe's plan: fingerprint each stage, skip what is cached, run the rest.

It knows nothing about SFT or DPO: it reads each stage's declared role and inputs, resolves
them through the model store, prepares every stage's data once, and per stage writes
`<run>/<stage>/stage.json` (status, role, fingerprint, lineage, data accounting, metrics,
wall time, peak memory, world size and strategy). `run()` returns the typed `RunResults`; writing
results.json and the reports is the caller's (posttrain.reporting.write_run). One run per directory,
enforced by an OS lock that dies with its process (a crashed run never leaves it stuck). Launched
on several processes, rank 0 holds the lock, writes the manifests and decides what is cached, and
every rank runs every stage (posttrain.distributed, docs/scaling.md).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import psutil
import torch
from transformers import set_seed

from posttrain import distributed
from posttrain.atomic import is_committed, write_json_atomic
from posttrain.errors import PosttrainError, StageError, StageInterrupted
from posttrain.progress import ProgressReporter
from posttrain.model_store import ModelStore
from posttrain.recipe import PlannedStage, Recipe
from posttrain.results import Evaluation, RunResults, StageSummary
from posttrain.run_layout import RunLayout
from posttrain.secrets import redact
from posttrain.versions import library_versions
from posttrain.stage import BASE, STAGE_DATA_PREFIX, PreparedData, ResolvedInputs, Role, StageContext, StageResult

@dataclass
class ScheduledStage:
    """A planned stage with its fingerprint and whether the run can reuse its committed output."""

    stage: PlannedStage
    fingerprint: str
    cached: bool
    dependency_fingerprints: dict[str, str] = field(default_factory=dict)
    reusable_from: Path | None = None  # an earlier run directory holding this stage, completed with this fingerprint

    @property
    def reads_stage_data(self) -> bool:
        return any(s.startswith(STAGE_DATA_PREFIX) for s in self.stage.data)


class PeakMemory:
    """Samples this process's resident memory in a thread: the peak during one stage."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self._process = psutil.Process()

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)

    def to_dict(self) -> dict:
        out = {"peak_rss_mb": round(self.peak / 2**20, 1)}
        if torch.cuda.is_available():
            out["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return out


class RunLock:
    """An exclusive flock on <run>/.lock; the kernel releases it when the process dies."""

    def __init__(self, layout: RunLayout):
        self.path = layout.lock

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            holder = self.path.read_text().strip() or "another process"
            raise PosttrainError(f"{self.path.parent}: another run is using this directory ({holder}); wait for it or pass --output DIR") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()}\n".encode())
        return self

    def __exit__(self, *exc):
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


class Pipeline:
    def __init__(self, recipe: Recipe, run_dir: Path, reporter: ProgressReporter | None = None, force: tuple[str, ...] = (),
                 reuse_from: Path | None = None):
        """reuse_from: an earlier run directory (e.g. the previous round of a feedback loop); a stage this run
        would train whose fingerprint matches a completed stage there is copied from it instead."""
        self.recipe = recipe
        self.run_dir = Path(run_dir)
        self.reuse_from = Path(reuse_from) if reuse_from is not None else None
        if self.reuse_from is not None:
            if not self.reuse_from.is_dir():
                raise PosttrainError(f"--reuse {self.reuse_from}: no such run directory")
            if self.reuse_from.resolve() == self.run_dir.resolve():
                raise PosttrainError(f"--reuse {self.reuse_from}: that is this run's own directory; its stages are reused anyway")
        self.reporter = reporter or ProgressReporter(quiet=True)
        unknown = [f for f in force if f not in {s.name for s in recipe.stages}]
        if unknown:
            raise PosttrainError(f"--force {unknown[0]}: no such stage in this plan; stages: {', '.join(s.name for s in recipe.stages)}")
        self.force = set(force)
        spec = recipe.spec
        template = None
        if spec.chat_template is not None:
            from posttrain.chat_templates import template_text

            template = template_text(spec.chat_template)
        self.store = ModelStore(self.run_dir, spec.base, spec.trust_remote_code, spec.seed, chat_template=template)
        self.layout = self.store.layout

    # -- planning -------------------------------------------------------------
    def _read_manifest(self, name: str) -> dict | None:
        try:
            return json.loads(self.layout.manifest(name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_manifest(self, manifest: dict) -> None:
        if distributed.is_main():  # rank 0 owns the run directory
            write_json_atomic(self.layout.manifest(manifest["name"]), redact(manifest))

    def _output_committed(self, stage: PlannedStage, layout: RunLayout | None = None) -> bool:
        layout = layout or self.layout
        if stage.role.produces_model:
            return is_committed(layout.model_dir(stage.name))
        if stage.role is Role.DATA:
            return layout.data_file(stage.name).is_file()
        return True

    def _completed_with(self, stage: PlannedStage, fingerprint: str, layout: RunLayout) -> bool:
        """Whether `layout`'s run holds `stage` completed with this fingerprint, its output committed."""
        try:
            manifest = json.loads(layout.manifest(stage.name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return (manifest.get("status") == "completed" and manifest.get("fingerprint") == fingerprint
                and self._output_committed(stage, layout))

    def plan(self) -> list[ScheduledStage]:
        versions = library_versions()
        fingerprints = {BASE: self.store.base_fingerprint}
        plans = []
        for stage in self.recipe.stages:
            identity = {
                "kind": stage.kind,
                "config": stage.config.model_dump(mode="json", by_alias=True, exclude={"description"}),
                "parent": fingerprints.get(stage.parent) if stage.parent else None,
                "dependencies": {d: fingerprints[d] for d in stage.dependencies},
                "inputs": stage.stage_cls.fingerprint_inputs(stage.config),
                "versions": versions,
            }
            fingerprint = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
            fingerprints[stage.name] = fingerprint
            if stage.role.produces_model:
                self.store.register_stage(stage.name, stage.role, fingerprint)
            cached = stage.name not in self.force and self._completed_with(stage, fingerprint, self.layout)
            reusable = (not cached and stage.name not in self.force and self.reuse_from is not None
                        and self._completed_with(stage, fingerprint, RunLayout(self.reuse_from)))
            plans.append(ScheduledStage(stage, fingerprint, cached, identity["dependencies"], self.reuse_from if reusable else None))
        return plans

    def _adopt_reused(self, plans: list[ScheduledStage]) -> None:
        """Copy the stages (and the imported base) an earlier run already made with the same fingerprints.

        Copied, not hard-linked: a later --force of a stage here, or an evaluation cache appended to, must
        never change the earlier run's files.
        """
        source = RunLayout(self.reuse_from)
        imported = self.store.imported_dir
        if imported is not None and not is_committed(imported):
            earlier = source.imported_dir(imported.name)
            if is_committed(earlier):
                _copy_dir(earlier, imported)
        for plan in plans:
            if plan.reusable_from is None:
                if not plan.cached:  # it runs again here: its content-keyed caches from the earlier run still serve
                    for name in plan.stage.stage_cls.shared_caches:
                        earlier, here = source.stage_dir(plan.stage.name) / name, self.layout.stage_dir(plan.stage.name) / name
                        if earlier.is_dir() and not here.exists():
                            _copy_dir(earlier, here)
                continue
            _copy_dir(source.stage_dir(plan.stage.name), self.layout.stage_dir(plan.stage.name))
            manifest = self._read_manifest(plan.stage.name)
            manifest["reused_from"] = str(self.reuse_from)
            self._write_manifest(manifest)
            plan.cached = True

    def _resolve_inputs(self, stage: PlannedStage) -> ResolvedInputs:
        """Names to models and files, through the store's one resolver."""
        return ResolvedInputs(
            parent=self.store.resolve(stage.parent) if stage.parent else None,
            evaluated=[self.store.resolve(name) for name in stage.evaluated],
            judge=self.store.resolve(stage.judge, expected=Role.REWARD) if stage.judge else None,
            data_files={s: self.layout.data_file(s.removeprefix(STAGE_DATA_PREFIX)) for s in stage.data if s.startswith(STAGE_DATA_PREFIX)},
            models_read={name: self.store.resolve(name) for name in stage.stage_cls.inputs(stage.config).models_read},
        )

    def _context(self, plan: ScheduledStage, inputs: ResolvedInputs, data: PreparedData | None) -> StageContext:
        stage = plan.stage
        return StageContext(name=stage.name, config=stage.config, stage_dir=self.layout.stage_dir(stage.name), store=self.store,
                            progress=self.reporter, inputs=inputs, seed=self.recipe.spec.seed, fingerprint=plan.fingerprint, data=data,
                            data_output=self.layout.data_file(stage.name) if stage.role is Role.DATA else None)

    def context(self, name: str) -> StageContext:
        """The context stage `name` would run with (inputs resolved, data prepared), without running it:
        for tools and tests that drive one stage by hand."""
        plan = next((p for p in self.plan() if p.stage.name == name), None)
        if plan is None:
            raise PosttrainError(f"no stage '{name}' in this plan; stages: {', '.join(s.name for s in self.recipe.stages)}")
        return self._context(plan, self._resolve_inputs(plan.stage), self._prepare_data(plan))

    def _prepare_data(self, plan: ScheduledStage) -> PreparedData | None:
        stage = plan.stage
        return stage.stage_cls.prepare_data(stage.config, self._resolve_inputs(stage).data_files, self.recipe.spec.seed)

    # -- running --------------------------------------------------------------
    def run(self) -> RunResults:
        distributed.check_plan(self.recipe)  # several processes: what cannot run is refused before anything starts
        here = distributed.init()  # several processes (torchrun, accelerate launch): join them; one: nothing
        distributed.use_strategy(self.recipe.spec.distributed.strategy)
        if not here.is_main:
            self.reporter = distributed.other_rank_reporter()
        lock = RunLock(self.layout)
        distributed.on_main(lambda: lock.__enter__() and None)  # rank 0 holds the lock for every rank; its refusal is theirs
        try:
            if here.is_main:
                self.reporter.log_to(self.layout.log)
            if here.distributed:
                self.reporter.message(f"{here.size} processes, strategy {self.recipe.spec.distributed.strategy}")
            try:
                return self._run_locked()
            finally:
                self.reporter.close_log()
        finally:
            if here.is_main:
                lock.__exit__(None, None, None)

    def _run_locked(self) -> RunResults:
        if self.recipe.spec.trust_remote_code:
            self.reporter.message("[yellow]trust_remote_code is ON for this recipe: model code from the hub will run.[/]")
        plans = self.plan()
        if self.reuse_from is not None:
            distributed.on_main(lambda: self._adopt_reused(plans))
        plans = self._agreed(plans)
        if not all(p.cached for p in plans):
            if self.store.imported_dir is not None and not is_committed(self.store.imported_dir):
                self.reporter.message(f"importing base {self.recipe.spec.base} into {self.store.imported_dir} (once per run directory; about a minute for 135M parameters on two cores)")
            if distributed.world().distributed:
                with distributed.main_first():  # rank 0 writes a built-in or imported base once; the others read it
                    if distributed.is_main():
                        self.store.load_model(BASE)
            self.store.check_base_chat_template()
        # Data is prepared once per stage. Every data problem surfaces before the first step of
        # training, except in data that an earlier stage of this run writes: that is prepared
        # when it exists, just before its reader runs.
        prepared = {p.stage.name: self._prepare_data(p) for p in plans if not p.cached and not p.reads_stage_data}
        summaries = {}
        for plan in plans:
            if not plan.cached and plan.reads_stage_data:
                prepared[plan.stage.name] = self._prepare_data(plan)
            summaries[plan.stage.name] = self._run_stage(plan, plans, prepared.get(plan.stage.name))
        # The caller judges the release gates and writes results.json and the reports
        # (posttrain.reporting.write_run): the pipeline knows nothing of reporting.
        return self._collect_results(plans, summaries)

    def _agreed(self, plans: list[ScheduledStage]) -> list[ScheduledStage]:
        """Rank 0's caching decisions, on every rank (each rank computed the same fingerprints, or the run stops)."""
        decided = distributed.on_main(lambda: [(p.fingerprint, p.cached) for p in plans])
        for plan, (fingerprint, cached) in zip(plans, decided):
            if plan.fingerprint != fingerprint:
                raise PosttrainError(f"stage '{plan.stage.name}': rank {distributed.world().rank} computed fingerprint {plan.fingerprint}, "
                                     f"rank 0 {fingerprint}; every process must see the same recipe, data files and library versions")
            plan.cached = cached
        return plans

    def _run_stage(self, plan: ScheduledStage, plans: list[ScheduledStage], data: PreparedData | None) -> dict:
        stage = plan.stage
        if plan.cached:
            how = f"reused from {plan.reusable_from}" if plan.reusable_from is not None else "cached"
            self.reporter.message(f"[dim]{stage.name} ({stage.kind}): {how}, fingerprint {plan.fingerprint}[/]")
            manifest = self._read_manifest(stage.name)
            manifest["cached"] = True
            return manifest

        stage_dir = self.layout.stage_dir(stage.name)
        inputs = self._resolve_inputs(stage)
        manifest = {
            "name": stage.name,
            "kind": stage.kind,
            "role": stage.role.value,
            "status": "running",
            "fingerprint": plan.fingerprint,
            "parent": stage.parent,
            "parent_fingerprint": inputs.parent.fingerprint if inputs.parent else None,
            "evaluated_models": stage.evaluated or None,
            "judge": stage.judge,
            "judge_fingerprint": inputs.judge.fingerprint if inputs.judge else None,
            "data_sources": stage.data or None,
            "base": self.recipe.spec.base,
            "config": stage.config.model_dump(mode="json", by_alias=True),
            "versions": library_versions(),
            "world_size": distributed.world().size,
            "strategy": self.recipe.spec.distributed.strategy if distributed.world().distributed else None,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self._write_manifest(manifest)
        source = stage.parent or ", ".join(stage.evaluated) or ", ".join(stage.data)
        self.reporter.message(f"[bold]{stage.name}[/] ({stage.kind}){' from ' + source if source else ''}")
        context = self._context(plan, inputs, data)
        set_seed(self.recipe.spec.seed)
        started = time.perf_counter()
        try:
            with PeakMemory() as memory:
                result: StageResult = stage.stage_cls().run(context)
            if stage.role.produces_model and inputs.parent is not None:
                manifest["tokenizer_fingerprint"] = self.store.check_tokenizer_carried(inputs.parent, stage.name)
            if stage.role is Role.DATA and not context.data_output.is_file():
                raise StageError(f"data stage '{stage.name}' ({stage.kind}) finished without writing {context.data_output}")
        except BaseException as e:
            error = e
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                error = PosttrainError(f"disk full while writing {e.filename or stage_dir} in stage '{stage.name}'; committed "
                                       "checkpoints and models are intact: free space and run the same command to resume")
            error = distributed.lost_peer(e) or error
            interrupted = isinstance(e, (StageInterrupted, KeyboardInterrupt))
            manifest.update(status="interrupted" if interrupted else "failed",
                            error=str(error).splitlines()[0] if str(error) else type(error).__name__,
                            wall_time_s=round(time.perf_counter() - started, 2))
            self._write_manifest(manifest)
            if error is e:
                raise
            raise error from e
        manifest.update(
            status="completed",
            wall_time_s=round(time.perf_counter() - started, 2),
            memory=self._memory(memory),
            data=result.data.to_dict() if result.data else None,
            metrics=result.metrics,
            curves=result.curves,
            evaluation=result.evaluation.model_dump(mode="json") if result.evaluation is not None else None,
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        if result.data:
            d = result.data
            dropped = ", ".join(f"{k} {v}" for k, v in d.dropped.items()) or "none"
            self.reporter.message(f"  data: {d.rows_read} rows read, {d.rows_used} used, {d.examples_used} examples; dropped: {dropped}")
        self._write_manifest(manifest)
        manifest["cached"] = False
        return manifest

    @staticmethod
    def _memory(memory: PeakMemory) -> dict:
        """Rank 0's peak memory, and with several processes every rank's (`per_rank`, in rank order)."""
        mine = memory.to_dict()
        if not distributed.world().distributed:
            return mine
        return mine | {"per_rank": distributed.gather(mine)}

    def _collect_results(self, plans: list[ScheduledStage], summaries: dict) -> RunResults:
        """The typed run results, from the stage manifests (written now, or read back for cached stages)."""
        stages, evaluation = {}, None
        for plan in plans:
            manifest = summaries[plan.stage.name]
            stages[plan.stage.name] = StageSummary.from_manifest(manifest, plan.stage.role)
            if plan.stage.role is Role.EVALUATION and manifest.get("evaluation") is not None:
                found = manifest["evaluation"]  # typed when the stage ran now, a dict when read back from stage.json
                evaluation = found if isinstance(found, Evaluation) else Evaluation.model_validate(found)
        return RunResults(
            recipe=self.recipe.name,
            recipe_path=str(self.recipe.path),
            profile=self.recipe.profile,
            run_dir=str(self.run_dir),
            stages=stages,
            evaluation=evaluation,
        )


def _copy_dir(source: Path, destination: Path) -> None:
    """`source` copied to `destination` whole or not at all (copied beside it, then renamed into place)."""
    partial = destination.with_name(f".{destination.name}.copying")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial, symlinks=True)
    shutil.rmtree(destination, ignore_errors=True)
    partial.rename(destination)
