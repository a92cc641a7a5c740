"""Dynamic batching: concurrent requests for one version and signature are answered by
one call of the model (TF Serving's batching with `max_batch_size` and
`batch_timeout_micros`).

A batch is closed when it holds `max_batch` inputs or `max_wait` seconds after its
first request arrived; a request is never split across batches (one larger than
`max_batch` is a batch of its own). Up to `parallel` batches run at once, in the
executor's threads (TensorFlow releases the GIL), while the next one fills. When a
batch fails (an input the request checks let through but the model cannot decode),
its requests are run one by one, so only the bad request gets the error.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from typing import Any, Callable

import numpy as np

Outputs = dict[str, np.ndarray]

# A batcher with nothing to do for this long ends its task; the next request starts it
# again. A version that is no longer served therefore holds no task.
IDLE_SECONDS = 30.0


class Batcher:
    def __init__(self, run: Callable[[list[bytes]], Outputs], executor: Executor,
                 max_batch: int = 64, max_wait: float = 0.002, parallel: int = 2,
                 on_batch: Callable[[int], None] | None = None):
        self.run = run
        self.executor = executor
        self.max_batch = max(1, max_batch)
        self.max_wait = max(0.0, max_wait)
        self.parallel = max(1, parallel)
        self.on_batch = on_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._slots: asyncio.Semaphore | None = None
        self._carry: tuple[list[bytes], asyncio.Future] | None = None
        self._running: set[asyncio.Task] = set()

    async def submit(self, inputs: list[bytes]) -> Outputs:
        """The model's outputs for `inputs`, computed in a batch with other requests."""
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._slots = asyncio.Semaphore(self.parallel)
        future = loop.create_future()
        self._queue.put_nowait((inputs, future))
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._loop())
        return await future

    async def _next(self, timeout: float | None):
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        assert self._queue is not None
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._slots is not None
        while True:
            try:
                first = await self._next(IDLE_SECONDS)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                return
            batch = [first]
            size = len(first[0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    item = await self._next(deadline - loop.time())
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if size + len(item[0]) > self.max_batch:
                    self._carry = item          # never split a request: the next batch's
                    break
                batch.append(item)
                size += len(item[0])
            await self._slots.acquire()
            task = loop.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[tuple[list[bytes], asyncio.Future]]) -> None:
        loop = asyncio.get_running_loop()
        assert self._slots is not None
        try:
            results = await loop.run_in_executor(self.executor, self._call, batch)
        except BaseException as exc:            # the executor itself went away
            results = [exc] * len(batch)
        finally:
            self._slots.release()
        if self.on_batch is not None:
            self.on_batch(sum(len(inputs) for inputs, _ in batch))
        for (_, future), result in zip(batch, results):
            if future.done():                   # the client went away
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _call(self, batch: list[tuple[list[bytes], Any]]) -> list[Outputs | BaseException]:
        """In an executor thread: the whole batch at once, else request by request."""
        inputs = [x for request, _ in batch for x in request]
        try:
            outputs = self.run(inputs)
        except Exception as exc:
            if len(batch) == 1:
                return [exc]
            results: list[Outputs | BaseException] = []
            for request, _ in batch:
                try:
                    results.append(self.run(request))
                except Exception as single:
                    results.append(single)
            return results
        results = []
        start = 0
        for request, _ in batch:
            stop = start + len(request)
            results.append({key: value[start:stop] for key, value in outputs.items()})
            start = stop
        return results
