"""Task functions the admin tests register on their own managers."""

from __future__ import annotations

import asyncio

from fastapi_taskflow import set_progress, task_log

XSS = '<img src=x onerror="window.__xss=1">'


async def succeed(value: object = None) -> object:
    return value


async def fail(message: str = "boom") -> None:
    raise RuntimeError(message)


async def log_and_fail(message: str) -> None:
    task_log(message)
    raise RuntimeError(message)


async def block(gate: asyncio.Event | None = None, started: asyncio.Event | None = None) -> None:
    if started is not None:
        started.set()
    await (gate or asyncio.Event()).wait()


async def stepped(gate: asyncio.Event, steps: int = 2) -> str:
    for step in range(steps):
        set_progress(step / steps, f"step {step}")
        await asyncio.sleep(0)
    await gate.wait()
    set_progress(1.0, "done")
    return "ok"


async def charge(card_number: str, amount: int) -> None:
    raise RuntimeError(f"card {card_number} declined for {amount}")


async def report_secret(password: str) -> None:
    """Echoes its secret argument into progress and into a log field of another name."""
    set_progress(0.5, f"signing in with {password}")
    task_log("signing in", detail=f"pw={password}", nested={"items": [password]})
    raise RuntimeError(f"login with {password} failed")
