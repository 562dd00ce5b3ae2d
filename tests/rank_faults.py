"""Loaders that make a sequence-parallel follower fail in one chosen way (tests/test_rank_faults.py).

They are ordinary :class:`pipeline.generation.ranks.PathsLoader` s plus a ``fault``; the follower process
unpickles them (this module is importable there: spawn hands the children pytest's ``sys.path``) and
the fault happens inside that process only, never on rank 0:

- ``raise_before_join``: ``for_follower()`` raises (the follower reports its reason and exits before it
  joins the group);
- ``exit_in_rendezvous``: the follower dies (exit code 4, no last words) inside init_process_group, after
  it said it was joining, so rank 0 is left in the rendezvous;
- ``hang_in_rollout``: the follower's first all-to-all sleeps for an hour before it enters the collective
  (a rank alive but stuck in its own work while rank 0 waits for it in a collective).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace

from pipeline.generation.ranks import PathsLoader

FAULTS = ("raise_before_join", "exit_in_rendezvous", "hang_in_rollout")


@dataclass(frozen=True)
class FaultyLoader(PathsLoader):
    fault: str = ""

    def for_follower(self) -> "FaultyLoader":
        assert self.fault in FAULTS, self.fault
        if self.fault == "raise_before_join":
            raise RuntimeError("rank 1 cannot see its GPU (injected by the test)")
        if self.fault == "exit_in_rendezvous":
            import torch.distributed

            def die(*args, **kwargs):
                os._exit(4)

            torch.distributed.init_process_group = die
        return replace(self, dit_only=True)

    def __call__(self, device):
        pipe = super().__call__(device)
        if self.dit_only and self.fault == "hang_in_rollout":
            from pipeline.dit import parallel

            def stuck(layout, x):
                time.sleep(3600)  # rank 0's watchdog kills this process long before

            parallel.Ulysses._exchange = stuck
        return pipe
