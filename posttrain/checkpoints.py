"""Mid-stage checkpoints that are committed atomically and resumed exactly.

The Trainer writes `checkpoint-N` (model, optimizer, scheduler, RNG states, trainer
state with the data position) under `<stage>/trainer/`, a scratch area. Once the write is
complete, `CommitCheckpoints` puts a marker in it and renames it to
`<stage>/checkpoints/step-N` (rename is atomic), then rotates older committed
checkpoints. A crash mid-save therefore leaves only scratch that is never loaded and is
deleted on the next start. Checkpoints are tied to the stage fingerprint: a changed
config never resumes from another config's state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from safetensors import safe_open
from transformers import TrainerCallback

from posttrain.atomic import COMMIT_MARKER, is_committed, write_text_atomic

STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointStore:
    def __init__(self, stage_dir: Path, fingerprint: str, keep: int = 2):
        self.scratch = stage_dir / "trainer"
        self.root = stage_dir / "checkpoints"
        self.fingerprint = fingerprint
        self.keep = keep

    def prepare(self) -> None:
        """Drop partial writes, and checkpoints that belong to another configuration."""
        shutil.rmtree(self.scratch, ignore_errors=True)
        owner = self.root / "FINGERPRINT"
        if self.root.exists() and (not owner.is_file() or owner.read_text().strip() != self.fingerprint):
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        write_text_atomic(owner, self.fingerprint + "\n")
        for path in self.root.iterdir():
            if path.is_dir() and not is_committed(path):
                shutil.rmtree(path)

    def committed(self) -> list[tuple[int, Path]]:
        """Committed checkpoints, newest first."""
        found = []
        for path in self.root.glob("step-*"):
            match = STEP_DIR.match(path.name)
            if match and is_committed(path):
                found.append((int(match.group(1)), path))
        return sorted(found, reverse=True)

    def latest_loadable(self, warn=print) -> Path | None:
        """The newest committed checkpoint whose files read back; older ones are the fallback."""
        for step, path in self.committed():
            problem = _unreadable(path)
            if problem is None:
                return path
            warn(f"checkpoint {path} is unreadable ({problem}); falling back to an older one")
            shutil.rmtree(path, ignore_errors=True)
        return None

    def commit(self, written: Path, step: int) -> Path:
        """Commit a fully written checkpoint directory as `step-<step>`: fsync, marker (with every file's
        size, so a later read can tell a torn file), atomic rename, then rotation."""
        _fsync_tree(written)
        files = {str(p.relative_to(written)): p.stat().st_size for p in sorted(written.rglob("*")) if p.is_file()}
        marker = {"step": step, "fingerprint": self.fingerprint, "files": files}
        (written / COMMIT_MARKER).write_text(json.dumps(marker) + "\n")
        target = self.root / f"step-{step}"
        shutil.rmtree(target, ignore_errors=True)
        os.replace(written, target)
        # Rotate only now that the new checkpoint is committed.
        for _, old in self.committed()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        return target


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())


def _unreadable(path: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None when its files read back: every file the
    commit recorded is there with its size, and every safetensors file loads. Independent of who
    wrote the checkpoint (a TRL Trainer or a stage's own loop)."""
    try:
        recorded = json.loads((path / COMMIT_MARKER).read_text()).get("files")
        if not recorded:
            return "the commit marker lists no files"
        for name, size in recorded.items():
            file = path / name
            if not file.is_file():
                return f"{name} is missing"
            if file.stat().st_size != size:
                return f"{name} has {file.stat().st_size} bytes, {size} were committed"
        for file in path.rglob("*.safetensors"):
            with safe_open(file, framework="pt") as f:
                for key in f.keys():
                    f.get_tensor(key)
    except Exception as e:  # any failure to read back means: do not resume from here
        return f"{type(e).__name__}: {e}"
    return None


class CommitCheckpoints(TrainerCallback):
    """Commits each checkpoint the Trainer has just finished writing."""

    def __init__(self, store: CheckpointStore):
        self.store = store

    def on_save(self, args, state, control, **kwargs):
        written = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if written.is_dir():
            self.store.commit(written, state.global_step)
