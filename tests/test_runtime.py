"""components/runtime.py: releasing memory between steps, collections."""

from __future__ import annotations

import gc
import threading
import weakref

from components import runtime


class _Node:
    def __init__(self) -> None:
        self.me = self            # a cycle: only the collector frees it


def test_release_memory_freezes_survivors_and_still_collects_later_garbage():
    try:
        kept = _Node()
        runtime.release_memory(freeze=True)
        assert gc.get_freeze_count() > 0        # survivors are out of later collections
        later = _Node()
        ref = weakref.ref(later)
        del later
        runtime.release_memory(freeze=True)     # garbage made after a freeze is freed
        assert ref() is None
        frozen = weakref.ref(kept)
        del kept
        runtime.thaw()                          # the run's end: back to the collector
        assert gc.get_freeze_count() == 0
        gc.collect()
        assert frozen() is None
    finally:
        gc.unfreeze()


def test_release_memory_freezes_nothing_unless_asked_or_off_the_main_thread():
    gc.unfreeze()
    runtime.release_memory()
    assert gc.get_freeze_count() == 0
    live = _Node()                # the main thread's step, still running
    worker = threading.Thread(target=runtime.release_memory, kwargs={"freeze": True})
    worker.start()
    worker.join()
    assert gc.get_freeze_count() == 0
    ref = weakref.ref(live)
    del live
    gc.collect()
    assert ref() is None


def test_fewer_collections_raises_only_the_young_generations_threshold():
    before = gc.get_threshold()
    try:
        runtime.fewer_collections()
        young, middle, old = gc.get_threshold()
        assert young == max(runtime.YOUNG_COLLECTION_THRESHOLD, before[0])
        assert (middle, old) == before[1:]
    finally:
        gc.set_threshold(*before)
