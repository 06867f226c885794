"""The default torch thread count (prolora.threads) and the --threads flag of train, eval and generate."""

from __future__ import annotations

import argparse

import pytest
import torch

from prolora.threads import default_threads, set_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cpus", "load", "cap", "expected"),
    [
        (2, 0.0, None, 2),  # idle: one per core
        (2, 0.4, None, 2),  # rounding: less than half a core busy
        (2, 1.0, None, 1),  # one competing process on two cores
        (2, 5.3, None, 1),  # overloaded: never below one
        (8, 2.6, None, 5),
        (8, 0.0, 4, 4),  # capped (torch's one per physical core)
    ],
)
def test_default_is_one_thread_per_free_core(cpus, load, cap, expected):
    assert default_threads(cpus, load, cap) == expected


def test_explicit_then_environment_then_rule(monkeypatch, restore_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert set_threads(1) == (1, "--threads") and torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert set_threads(None) == (1, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr("prolora.threads.busy_cpus", lambda: 99.0)
    threads, why = set_threads(None)
    assert threads == 1 == torch.get_num_threads() and "load 99.0" in why
    with pytest.raises(ValueError, match="--threads 0"):
        set_threads(0)


def test_train_eval_generate_take_threads():
    from prolora.cli import eval as eval_cli
    from prolora.cli import generate
    from prolora.train.config import TrainConfig, add_config_arguments, resolve_config

    for module in (eval_cli, generate):
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        assert any(a.dest == "threads" and a.type is int for a in parser._actions)
    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    assert resolve_config(parser.parse_args(["--threads", "2"])).threads == 2
    assert TrainConfig().threads is None
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="threads="):
            TrainConfig(threads=bad)
