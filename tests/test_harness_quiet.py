"""lm-eval is quieted for the duration of an evaluation only: what was changed is put back."""

from __future__ import annotations

import logging

import pytest


def _state():
    import lm_eval.evaluator

    return lm_eval.evaluator.get_git_commit_hash, lm_eval.evaluator.add_env_info, logging.getLogger("lm_eval").level


def test_quieting_is_scoped_to_the_evaluation():
    import lm_eval.evaluator

    from posttrain.eval.harness import _quiet_lm_eval

    before = _state()
    with _quiet_lm_eval():
        # No `git describe`, no torch collect_env, errors only.
        assert lm_eval.evaluator.get_git_commit_hash() is None
        results = {}
        assert lm_eval.evaluator.add_env_info(results) is None and results == {}
        assert logging.getLogger("lm_eval").level == logging.ERROR
    assert _state() == before

    with pytest.raises(RuntimeError, match="evaluation failed"):
        with _quiet_lm_eval():
            raise RuntimeError("evaluation failed")
    assert _state() == before
