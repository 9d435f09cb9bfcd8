"""A launcher's world of several processes is joined or refused, never run as copies of one
training (tests/test_trainer_e2e.py runs two CPU processes under torchrun)."""

from __future__ import annotations

import pytest
import torch

from trainer.ppo.distributed import WorldMismatch, check_world, cpu_world_needed


def test_a_joined_world_passes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    check_world(1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    check_world(2)


def test_a_world_accelerate_did_not_join_is_an_error_that_says_what_to_do(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(WorldMismatch, match="started 2 processes.*world of 1.*MASTER_ADDR"):
        check_world(1)


@pytest.mark.parametrize("world_size, accelerator, needed", [
    ("2", False, True),   # torchrun on CPUs: accelerate joins only when asked for the CPU
    ("2", True, False),   # an accelerator's own backend forms the world
    ("1", False, False),  # a single process has no world to join
])
def test_the_cpu_is_asked_for_only_for_several_processes_without_an_accelerator(
        monkeypatch, world_size, accelerator, needed):
    monkeypatch.setenv("WORLD_SIZE", world_size)
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: accelerator)
    assert cpu_world_needed() is needed
