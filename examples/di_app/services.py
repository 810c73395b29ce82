"""The app's own service: a mailer (here it only records what it would send)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger("di_app.mailer")


@dataclass
class Mailer:
    """Sends mail from ``sender``; ``outbox`` keeps what was sent (a real one would use SMTP)."""

    sender: str
    outbox: list[tuple[str, str]] = field(default_factory=list)

    async def send(self, to: str, subject: str) -> None:
        self.outbox.append((to, subject))
        logger.info("mail from %s to %s: %s", self.sender, to, subject)
