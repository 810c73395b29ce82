"""Instructions per request and per task, counted by valgrind: a figure that does not move.

Wall-clock figures on a shared VM move by 25% between runs; a change of a few microseconds
hides in that noise. This script runs each scenario under ``valgrind --tool=cachegrind``
twice (with ``--small`` and ``--large`` operations after the same warm-up) and divides the
difference in executed instructions by the difference in operations, so start-up and
shutdown cancel out. The garbage collector is off in every run: its cost depends on the whole
heap, not on the code under test (bench_core.py measures with it on).

  scenario   one operation
  empty      a request to a route that does nothing
  plain      a request adding one task through FastAPI's BackgroundTasks
  depends    the same, BackgroundTasks reached through an async Depends
  managed    a request adding one task through Depends(task_manager.get_tasks)
  floor      a request creating 20 bare asyncio tasks of a no-op coroutine
  fan        a request adding 20 managed tasks
  fan_result the same, each task returning a small dict (kept on its record)
  fan_rate   the same as fan, the task with a rate limit far above the load

Usage: python bench/bench_instructions.py [--small 100] [--large 300] [--jobs 2]
(needs valgrind; ``apt-get install valgrind``). One scenario alone, as valgrind runs it:
python bench/bench_instructions.py --run managed --n 300
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from fastapi import BackgroundTasks, Depends, FastAPI

from fastapi_taskflow import ManagedBackgroundTasks, RateLimit, TaskManager

SCENARIOS = ("empty", "plain", "depends", "managed", "floor", "fan", "fan_result", "fan_rate")
SMALL_RESULT = {"ok": True, "pages": 3, "id": "r-1"}
FAN = 20  # tasks per request in "floor" and "fan"
WARMUP = 20


class Counter:
    def __init__(self) -> None:
        self.n = 0

    async def hit(self) -> None:
        self.n += 1

    async def hit_with_result(self) -> dict[str, Any]:
        self.n += 1
        return SMALL_RESULT

    async def hit_limited(self) -> None:
        self.n += 1


def build(scenario: str, manager: TaskManager, counter: Counter) -> tuple[FastAPI, int]:
    """The scenario's app and how many task runs one request causes."""
    app = FastAPI()

    async def get_background(background_tasks: BackgroundTasks) -> BackgroundTasks:
        return background_tasks

    async def empty() -> dict[str, bool]:
        return {"ok": True}

    async def plain(background_tasks: BackgroundTasks) -> dict[str, bool]:
        background_tasks.add_task(counter.hit)
        return {"ok": True}

    async def depends(
        background_tasks: BackgroundTasks = Depends(get_background),  # noqa: B008
    ) -> dict[str, bool]:
        background_tasks.add_task(counter.hit)
        return {"ok": True}

    async def managed(
        tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
    ) -> dict[str, bool]:
        tasks.add_task(counter.hit)
        return {"ok": True}

    async def floor() -> dict[str, bool]:
        # Kept until the request ends, as asyncio needs; run by the time the next one starts.
        pending = [asyncio.create_task(counter.hit()) for _ in range(FAN)]
        await asyncio.gather(*pending)
        return {"ok": True}

    def fan_of(job: Callable[[], Any]) -> Callable[..., Any]:
        async def fan(
            tasks: ManagedBackgroundTasks = Depends(manager.get_tasks),  # noqa: B008
        ) -> dict[str, bool]:
            for _ in range(FAN):
                tasks.add_task(job)
            return {"ok": True}

        return fan

    routes: dict[str, tuple[Callable[..., Any], int]] = {
        "empty": (empty, 0),
        "plain": (plain, 1),
        "depends": (depends, 1),
        "managed": (managed, 1),
        "floor": (floor, FAN),
        "fan": (fan_of(counter.hit), FAN),
        "fan_result": (fan_of(counter.hit_with_result), FAN),
        "fan_rate": (fan_of(counter.hit_limited), FAN),
    }
    endpoint, runs = routes[scenario]
    app.post("/go")(endpoint)
    return app, runs


async def run_scenario(scenario: str, n: int) -> None:
    """What valgrind runs: warm-up, then ``n`` requests; checks every task ran."""
    counter = Counter()
    manager = TaskManager()
    manager.task()(counter.hit)
    manager.task()(counter.hit_with_result)
    manager.task(rate_limit=RateLimit(1_000_000, per=1.0))(counter.hit_limited)
    app, runs = build(scenario, manager, counter)
    await manager.startup()
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _ in range(WARMUP + n):
                response = await client.post("/go")
                if response.status_code != 200:
                    raise SystemExit(f"{scenario}: request answered {response.status_code}")
            await manager.join()
    finally:
        await manager.shutdown()
    if counter.n != runs * (WARMUP + n):
        raise SystemExit(f"{scenario}: {counter.n} task runs, expected {runs * (WARMUP + n)}")


def count_instructions(scenario: str, n: int) -> int:
    command = [
        "valgrind",
        "--tool=cachegrind",
        "--cache-sim=no",
        "--cachegrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--run",
        scenario,
        "--n",
        str(n),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{scenario} failed under valgrind:\n{done.stdout}{done.stderr}")
    match = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if match is None:
        raise SystemExit(f"no instruction count in valgrind's output:\n{done.stderr}")
    return int(match.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=300)
    parser.add_argument("--jobs", type=int, default=2, help="valgrind runs at once")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated subset to count"
    )
    parser.add_argument("--run", choices=SCENARIOS, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    gc.disable()
    if args.run:
        asyncio.run(run_scenario(args.run, args.n))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    chosen = [s for s in args.scenarios.split(",") if s]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(unknown)}")
    runs = [(s, n) for s in chosen for n in (args.small, args.large)]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        counts = dict(zip(runs, pool.map(lambda r: count_instructions(*r), runs), strict=True))
    per = {
        s: (counts[s, args.large] - counts[s, args.small]) / (args.large - args.small)
        for s in chosen
    }
    print(f"instructions per request ({args.large} - {args.small} requests, gc off)")
    for name in ("empty", "plain", "depends", "managed"):
        if name in per and "plain" in per:
            print(f"  {name:8s} {per[name]:12,.0f}   {per[name] / per['plain']:.3f}x plain")
    print("instructions per task")
    if {"floor", "empty", "fan", "managed"} <= set(per):
        floor_task = (per["floor"] - per["empty"]) / FAN
        managed_task = (per["fan"] - per["managed"]) / (FAN - 1)
        print(f"  bare asyncio.create_task + run        {floor_task:10,.0f}")
        print(
            f"  managed task (in a request of {FAN})     {managed_task:10,.0f}"
            f"   library {managed_task - floor_task:,.0f}"
        )
    for name, what in (("fan_result", "a small result kept"), ("fan_rate", "rate limit, unmet")):
        if name in per and "fan" in per:
            print(f"  {what:37s} {(per[name] - per['fan']) / FAN:+10,.0f} per task vs fan")


if __name__ == "__main__":
    main()
