"""Micro-batching: images from concurrent requests go through the model together, in one forward pass."""

from __future__ import annotations

import asyncio

import torch


class MicroBatcher:
    """Collects single images from concurrent requests into batches for one forward pass each: an image waits
    up to `max_wait_ms` for company, and a batch holds at most `max_batch` images."""

    def __init__(self, predict, max_batch: int = 32, max_wait_ms: float = 5.0):
        self.predict, self.max_batch, self.max_wait = predict, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue()
        # what /health reports: forward passes so far and the most images one of them took
        self.batches = 0
        self.largest_batch = 0
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()

    async def submit(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        futures = []
        for img in images:
            future = loop.create_future()
            await self.queue.put((img, future))
            futures.append(future)
        return list(await asyncio.gather(*futures))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), timeout))
                except asyncio.TimeoutError:
                    break
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(items))
            try:
                probs = await loop.run_in_executor(None, self.predict, torch.stack([img for img, _ in items]))
                for (_, future), row in zip(items, probs):
                    if not future.done():
                        future.set_result(row)
            except Exception as e:  # a model failure fails these requests, never the server
                for _, future in items:
                    if not future.done():
                        future.set_exception(e)
