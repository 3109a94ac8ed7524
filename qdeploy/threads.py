"""PyTorch's intra-op thread count: one process-wide setting, changed only where it must be.

`torch.set_num_threads` is global to the process. Code that flips it around every call
(an engine's forward, say) races with any other thread doing the same (serving runs engine
instances in a thread pool), so engines set it once when they are built, and only the
single-threaded experiments (NQM probes) scope it with `torch_threads`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def set_intra_op_threads(threads: int) -> None:
    """Use `threads` intra-op threads from now on (0 keeps the current count; no call when unchanged)."""
    if threads and threads != torch.get_num_threads():
        torch.set_num_threads(threads)


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """Run the block with `threads` intra-op threads, then restore the previous count.

    Probing runs thousands of small matrix products, where OpenMP synchronisation costs
    more than a second thread saves; on shared cores it is ten times slower (measured).
    """
    previous = torch.get_num_threads()
    set_intra_op_threads(threads)
    try:
        yield
    finally:
        set_intra_op_threads(previous)
