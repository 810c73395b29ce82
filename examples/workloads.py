"""What both example apps do in the background, written once: a mail server that fails now
and then, a CPU-heavy report and a contact import that reports progress.

``examples/di_app`` (what ``make run`` serves) and ``examples/app.py`` (the plain form) each
register these as tasks their own way; only the wiring differs.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi_taskflow import set_progress, task_log

logger = logging.getLogger("examples.mailer")

INDEX_PAGE = Path(__file__).with_name("index.html")


class SmtpUnavailable(ConnectionError):
    """The simulated mail server refused the connection."""


@dataclass
class Mailer:
    """Sends mail from ``sender``; refuses a share ``failure_rate`` (0.0 to 1.0) of messages,
    as a busy SMTP server does. ``outbox`` keeps what was accepted (nothing really leaves)."""

    sender: str
    failure_rate: float = 0.0
    outbox: list[tuple[str, str]] = field(default_factory=list)

    async def send(self, to: str, subject: str) -> None:
        await asyncio.sleep(0.2)  # the network round trip
        if random.random() < self.failure_rate:
            raise SmtpUnavailable("421 smtp.example.test: service not available, try again later")
        self.outbox.append((to, subject))
        logger.info("mail from %s to %s: %s", self.sender, to, subject)


def build_report(report_id: int, size: int = 200_000) -> dict[str, Any]:
    """Count primes below ``size`` and checksum them: CPU work that would stall the event loop."""
    task_log("sieving primes", report_id=report_id, size=size)
    sieve = bytearray([1]) * size
    sieve[:2] = b"\x00\x00"
    for n in range(2, int(size**0.5) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, size, n)))
    primes = [n for n in range(size) if sieve[n]]
    digest = hashlib.sha256(",".join(map(str, primes)).encode()).hexdigest()
    task_log("report ready", report_id=report_id, primes=len(primes))
    return {"report_id": report_id, "primes": len(primes), "sha256": digest, "pid": os.getpid()}


async def import_contacts(rows: int, batch: int = 25) -> None:
    """Import contacts in batches, logging each one and reporting progress as it goes."""
    done = 0
    while done < rows:
        step = min(batch, rows - done)
        await asyncio.sleep(0.1)  # a database round trip per batch
        done += step
        set_progress(done / rows, f"{done} of {rows} contacts")
        task_log(f"imported batch of {step}", level="debug", done=done)
    task_log(f"imported {rows} contacts")


def new_report_id() -> int:
    return random.randint(1000, 9999)


def accepted(task_id: str, **extra: Any) -> dict[str, Any]:
    """The body of a 202: the new task's id and where to follow it."""
    return {"task_id": task_id, "status_url": f"/tasks/{task_id}", **extra}


def index_page() -> str:
    """The page that says what to click (examples/index.html)."""
    return INDEX_PAGE.read_text(encoding="utf-8")
