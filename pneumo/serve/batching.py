"""Adaptive batching: each model call takes everything that queued while the previous one ran.

A lone request waits for nothing; under load every call takes up to max_batch_size queued images,
so the batch size follows the load without a timeout to tune. Ray's `@serve.batch` forms a batch
before it waits for its turn to run: with `batch_wait_timeout_s=0` it made batches of one under
load, and with the previous 10 ms it added 10 ms to every lone request (docs/decisions/serving-design.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, Optional, TypeVar

Item, Result = TypeVar("Item"), TypeVar("Result")


class AdaptiveBatcher(Generic[Item, Result]):
    """`await batcher.submit(item)` -> `run_batch([...items])[i]`, run_batch called in a worker thread,
    one batch at a time (the model's own threads do the parallel work)."""

    def __init__(
        self,
        run_batch: Callable[[list[Item]], list[Result]],
        max_batch_size: int,
        wait_s: float = 0.0,
        on_batch: Optional[Callable[[int], None]] = None,
    ):
        self.run_batch, self.max_batch_size, self.wait_s, self.on_batch = run_batch, max_batch_size, wait_s, on_batch
        self._queue: Optional[asyncio.Queue] = None  # made in the event loop that serves requests
        self._worker: Optional[asyncio.Task] = None

    async def submit(self, item: Item) -> Result:
        if self._worker is None or self._worker.done():
            self._queue = self._queue or asyncio.Queue()
            self._worker = asyncio.create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _next_batch(self) -> list[tuple[Item, asyncio.Future]]:
        batch = [await self._queue.get()]
        if self.wait_s and self._queue.qsize() < self.max_batch_size - 1:
            await asyncio.sleep(self.wait_s)  # serve.batch_wait_timeout_s > 0: trade latency for fuller batches
        while len(batch) < self.max_batch_size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return [(item, future) for item, future in batch if not future.cancelled()]  # client gone: skip

    async def _work(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            if self.on_batch:
                self.on_batch(len(batch))
            try:
                results = await asyncio.to_thread(self.run_batch, [item for item, _ in batch])
            except Exception as error:  # every caller gets the error; the worker serves on
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, future), result in zip(batch, results):
                if not future.done():
                    future.set_result(result)
