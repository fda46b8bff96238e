"""Cyclic garbage collection paused for the length of the start-up probes.

The start-up probes make a botocore client per (account, region), hundreds of thousands of
small objects in all, nearly every one kept. CPython's collector runs a full collection
each time enough of them survive, and a full collection walks every tracked object of the
process (every module's too): with 150 accounts in two regions, about a third of the
start-up's CPU (measured with bench/many_accounts.py: 4.5 s of CPU to SERVING, 3.2 s
paused). Paused, the little cyclic garbage the probes leave is collected by the next
collection after them; RSS is a few MB higher (~8 MB at 300 clients: freed memory is not
all given back to the system), against a limit of hundreds.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No automatic cyclic collection inside the block, unless something else turned it off
    already (then it is left as found: whoever did turns it back on)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
