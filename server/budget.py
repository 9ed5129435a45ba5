"""A number of bytes shared by the uploads in flight: each takes what it needs and gives it
back when done, so all of them together never hold more than the capacity.

Used from the event loop only (no lock needed): :meth:`Budget.take` waits, up to a
deadline, for others to give bytes back.
"""

from __future__ import annotations

import asyncio


class Budget:
    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self.used = 0
        self._given_back: asyncio.Event | None = None

    def try_take(self, amount: int) -> bool:
        if self.used + amount > self.capacity:
            return False
        self.used += amount
        return True

    async def take(self, amount: int, wait_seconds: float) -> bool:
        """Take ``amount``, waiting up to ``wait_seconds`` for room; False if there was none
        (at once when ``amount`` exceeds the whole capacity: waiting cannot help)."""
        if amount > self.capacity:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while not self.try_take(amount):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self._given_back is None:
                self._given_back = asyncio.Event()
            try:
                await asyncio.wait_for(self._given_back.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return True

    def give(self, amount: int) -> None:
        self.used -= amount
        if self._given_back is not None:  # wake every waiter; each tries again
            self._given_back.set()
            self._given_back = None
