"""Micro-batching for the HTTP server: concurrent requests share one forward pass.

Requests wait in a queue while the model is busy; when it frees, every waiting request (up to
``max_images`` inputs) goes through :meth:`PredictionService.answer_many` together. No request
waits for a timer: an idle server answers a lone request at once, a busy one batches what
arrived meanwhile (the "adaptive batching" of serving systems such as Clipper, NSDI '17). The
model runs on one worker thread so that the event loop keeps reading requests.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from modelheist.api.service import PredictionService, Receipt
from modelheist.errors import ModelheistError


class MicroBatcher:
    """Queues (client, inputs) requests and answers them in shared batches."""

    def __init__(self, service: PredictionService, max_images: int = 1024):
        self.service = service
        self.max_images = max_images
        self._queue: deque[tuple[str, np.ndarray, asyncio.Future[Receipt]]] = deque()
        self._draining = False
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None  # a strong reference: asyncio keeps weak ones

    async def submit(self, client_id: str, x: np.ndarray) -> Receipt:
        """Answer ``x`` for ``client_id``; raises the error that refused it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Receipt] = loop.create_future()
        self._queue.append((client_id, x, future))
        if not self._draining:
            self._draining = True
            self._task = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="modelheist-model")
        try:
            while self._queue:
                batch = [self._queue.popleft()]
                images = len(batch[0][1])
                while self._queue and images + len(self._queue[0][1]) <= self.max_images:
                    images += len(self._queue[0][1])
                    batch.append(self._queue.popleft())
                requests = [(client_id, x) for client_id, x, _ in batch]
                try:
                    results: (
                        list[Receipt | ModelheistError] | list[BaseException]
                    ) = await loop.run_in_executor(
                        self._executor, self.service.answer_many, requests
                    )
                except Exception as exc:  # a bug or a failed commit: every request fails
                    results = [exc] * len(batch)
                for (_, _, future), result in zip(batch, results, strict=True):
                    if future.done():  # the client went away
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._draining = False

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
