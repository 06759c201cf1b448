"""Atomic directories and the checkpoint store's rules, on real files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from posttrain.atomic import atomic_directory, is_committed
from posttrain.checkpoints import CheckpointStore


def test_failed_write_leaves_the_previous_directory_untouched(tmp_path):
    target = tmp_path / "model"
    with atomic_directory(target) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "weights").write_text("v2-partial")
            raise RuntimeError("crash mid-write")
    assert (target / "weights").read_text() == "v1" and is_committed(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary left behind


def _fake_trainer_checkpoint(scratch, step: int):
    path = scratch / f"checkpoint-{step}"
    path.mkdir(parents=True)
    save_file({"w": torch.full((2,), float(step))}, path / "model.safetensors")
    torch.save({"state": {}}, path / "optimizer.pt")
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def test_commit_rotates_only_after_the_new_checkpoint_is_committed(tmp_path):
    store = CheckpointStore(tmp_path, "fp1", keep=2)
    store.prepare()
    for step in (2, 4, 6):
        store.commit(_fake_trainer_checkpoint(store.scratch, step), step)
    assert [s for s, _ in store.committed()] == [6, 4]
    assert store.latest_loadable().name == "step-6"


def test_partial_and_foreign_checkpoints_are_never_loaded(tmp_path):
    store = CheckpointStore(tmp_path, "fp1")
    store.prepare()
    store.commit(_fake_trainer_checkpoint(store.scratch, 2), 2)
    uncommitted = store.root / "step-4"
    uncommitted.mkdir()
    _fake_trainer_checkpoint(store.scratch, 6)  # the Trainer was killed before the commit
    store.prepare()
    assert not uncommitted.exists() and not store.scratch.exists()
    assert store.latest_loadable().name == "step-2"

    other_config = CheckpointStore(tmp_path, "fp2")
    other_config.prepare()
    assert other_config.latest_loadable() is None


def test_unreadable_latest_falls_back(tmp_path):
    store = CheckpointStore(tmp_path, "fp1", keep=3)
    store.prepare()
    for step in (2, 4):
        store.commit(_fake_trainer_checkpoint(store.scratch, step), step)
    (store.root / "step-4" / "model.safetensors").write_bytes(b"\x00garbage")
    warnings = []
    assert store.latest_loadable(warn=warnings.append).name == "step-2"
    assert "step-4" in warnings[0] and not (store.root / "step-4").exists()


def test_a_committed_file_that_went_missing_or_changed_size_falls_back(tmp_path):
    store = CheckpointStore(tmp_path, "fp1", keep=3)
    store.prepare()
    for step in (2, 4, 6):
        store.commit(_fake_trainer_checkpoint(store.scratch, step), step)
    (store.root / "step-6" / "optimizer.pt").unlink()
    with open(store.root / "step-4" / "trainer_state.json", "a") as f:
        f.write(" ")  # still valid JSON, but not what was committed
    warnings = []
    assert store.latest_loadable(warn=warnings.append).name == "step-2"
    assert "optimizer.pt is missing" in warnings[0] and "trainer_state.json has" in warnings[1]
