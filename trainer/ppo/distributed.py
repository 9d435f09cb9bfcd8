"""The process world a launcher (torchrun, accelerate launch) started, and whether the trainer joined it.

A process that does not join its launcher's world trains alone, with the same seed and data
shard as its siblings, into the same output dir: copies of one run, every metrics row written
once per process. On CPUs accelerate joins the world only when told to use the CPU.
"""

from __future__ import annotations

import os

import torch


class WorldMismatch(RuntimeError):
    """The launcher started several processes but accelerate did not make them one world."""


def launcher_world_size() -> int:
    """Processes the launcher started (its WORLD_SIZE); 1 when none set it."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def cpu_world_needed() -> bool:
    """Whether accelerate must be asked for the CPU (``cpu=True``) to join the launcher's world:
    several processes and no accelerator, where accelerate would otherwise form no world."""
    return launcher_world_size() > 1 and not torch.accelerator.is_available()


def check_world(num_processes: int) -> None:
    """Raise :class:`WorldMismatch` unless accelerate's ``num_processes`` is the launcher's world size."""
    expected = launcher_world_size()
    if num_processes != expected:
        raise WorldMismatch(
            f"the launcher started {expected} processes (WORLD_SIZE={expected}) but accelerate formed a world of "
            f"{num_processes}: each process would train alone, a copy of the same run into the same output dir. "
            "Check the launcher's environment (MASTER_ADDR, MASTER_PORT, RANK) and that this device has a "
            "distributed backend; on one without (e.g. Apple MPS) run a single process.")
