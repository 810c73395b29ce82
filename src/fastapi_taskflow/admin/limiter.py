"""The login limiter: a growing wait after repeated failures, shared through the backend.

Three counters per attempt, each with its own free failures:

- the client address (``ADDRESS_FREE``): one address guessing at many users;
- the address with the username (``PAIR_FREE``): one address guessing one user's password;
- the username alone (``USER_FREE``, high): many addresses guessing one user's password.

Someone at another address therefore cannot lock a user out before ``USER_FREE`` failures, and
a valid account of the attacker's own clears only that account's counters, never the address's.
Past its free failures a counter blocks for ``window`` seconds, doubling with each further
failure up to ``max_delay``; failures are forgotten after ``memory`` seconds without one.
Usernames are compared casefolded, so ``Admin`` and ``admin`` share a counter.

The address is ``request.client.host``: behind a proxy that is the proxy unless the server
trusts its ``X-Forwarded-For`` (uvicorn ``--forwarded-allow-ips``), and a server that trusts
every sender lets each request choose its address.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from .shared import SharedCounters

ADDRESS_FREE = 10
PAIR_FREE = 5
USER_FREE = 50
LONG_NAME = 64


def _user_key(username: str) -> str:
    """The casefolded name; a digest of it when long, so keys stay small whatever is sent."""
    user = username.casefold()
    if len(user) <= LONG_NAME:
        return user
    return "sha256:" + hashlib.sha256(user.encode("utf-8", "surrogatepass")).hexdigest()


class LoginLimiter:
    """Counts failed logins per address, address and user, and user; answers the wait."""

    def __init__(
        self,
        counters: SharedCounters,
        *,
        window: float = 60.0,
        max_delay: float = 900.0,
        memory: float = 3600.0,
    ) -> None:
        self.counters = counters
        self.window = window
        self.max_delay = max_delay
        self.memory = memory

    @staticmethod
    def keys(address: str, username: str | None) -> list[tuple[str, int]]:
        """(counter key, free failures) for one attempt."""
        keys = [(f"addr:{address}", ADDRESS_FREE)]
        if username:
            user = _user_key(username)
            keys += [(f"pair:{address}|{user}", PAIR_FREE), (f"user:{user}", USER_FREE)]
        return keys

    @staticmethod
    def user_keys(address: str, username: str) -> list[str]:
        """The counters a successful login clears: the user's, never the address's."""
        user = _user_key(username)
        return [f"pair:{address}|{user}", f"user:{user}"]

    def delay(self, failures: int, free: int) -> float:
        """Seconds a counter at ``failures`` blocks; 0 below its free failures."""
        if failures < free:
            return 0.0
        return min(self.window * 2.0 ** min(failures - free, 32), self.max_delay)

    async def retry_after(self, keys: Sequence[tuple[str, int]]) -> int:
        """Whole seconds until every counter of ``keys`` lets a login through; 0 now."""
        wait = 0.0
        for key, _free in keys:
            wait = max(wait, (await self.counters.get("login-block:" + key))[1])
        return math.ceil(wait) if wait > 0 else 0

    async def failed(self, keys: Sequence[tuple[str, int]]) -> None:
        for key, free in keys:
            failures = await self.counters.add("login-fail:" + key, 1, self.memory)
            wait = self.delay(failures, free)
            if wait > 0:
                # The count as the value: the busiest counters are the last a full in-process
                # table sheds.
                await self.counters.add("login-block:" + key, failures, wait)

    async def succeeded(self, keys: Sequence[str]) -> None:
        for key in keys:
            await self.counters.delete("login-fail:" + key)
            await self.counters.delete("login-block:" + key)
