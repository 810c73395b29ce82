"""Signed sessions and how they end.

A session token is ``payload.signature`` (base64url, HMAC-SHA256 over the payload): the user,
the expiry, the CSRF nonce (which also names the session) and a stamp of the user's
credentials. Every worker sharing ``secret_key`` checks it without a lookup, and then asks:

- has it ended? Logging out records the session's nonce in the shared counters until the
  token would have expired anyway, so every instance on the backend refuses it (its own at
  once, the others within ``RECHECK_AFTER`` seconds);
- do the user's credentials still match the stamp? A removed user, or a changed password,
  ends every session of that user;
- is its expiry within ``token_expiry`` of now? A token claiming a longer life was not made
  by this configuration (a forged or an old, longer-lived one).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from .shared import SharedCounters

# Instances' clocks differ a little; a token from a server a few seconds ahead is still good.
CLOCK_SKEW = 60
# How long a session found live is trusted before the backend is asked again, and for how many
# sessions at most (a flood of tokens must not grow the table without bound).
RECHECK_AFTER = 1.0
MAX_TRUSTED = 10_000


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a request and how they proved it."""

    user: str
    via: str  # "cookie", "bearer", "token", "dependency" or "open"
    csrf: str | None = None  # the session's CSRF nonce, which also names the session
    expires: int | None = None
    stamp: str | None = None


class SessionSigner:
    """Issues and checks ``payload.signature`` tokens living at most ``lifetime`` seconds."""

    def __init__(self, secret: str | bytes, lifetime: int) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._key = hmac.new(raw, b"fastapi-taskflow session v1", hashlib.sha256).digest()
        self._stamp_key = hmac.new(raw, b"fastapi-taskflow credential v1", hashlib.sha256).digest()
        self.lifetime = lifetime

    def stamp(self, user: str, version: str) -> str:
        """A keyed digest of the user's credential version: stored in the token, it reveals
        nothing about the password to whoever reads the token."""
        message = json.dumps([user, version]).encode()
        return _b64(hmac.digest(self._stamp_key, message, "sha256")[:12])

    def issue(self, user: str, stamp: str = "", now: float | None = None) -> tuple[str, str]:
        """A new token for ``user`` and the CSRF nonce inside it."""
        csrf = secrets.token_urlsafe(24)
        issued = time.time() if now is None else now
        payload = {"u": user, "exp": int(issued + self.lifetime), "c": csrf, "s": stamp}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}", csrf

    def verify(self, token: str, now: float | None = None) -> Identity | None:
        """The identity in a well-signed, unexpired token; None for anything else."""
        body, _, signature = token.partition(".")
        # Bytes, not str: compare_digest refuses non-ASCII str (a TypeError, once a 500).
        if (
            not body
            or not signature
            or not hmac.compare_digest(
                self._sign(body).encode(), signature.encode("utf-8", "surrogatepass")
            )
        ):
            return None
        try:
            payload = json.loads(_unb64(body))
            user, expires, csrf = payload["u"], payload["exp"], payload["c"]
            stamp = payload.get("s", "")
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if not all(isinstance(v, str) for v in (user, csrf, stamp)) or type(expires) is not int:
            return None
        now = time.time() if now is None else now
        if not now < expires <= now + self.lifetime + CLOCK_SKEW:
            return None
        return Identity(user, "cookie", csrf, expires, stamp)

    def _sign(self, body: str) -> str:
        return _b64(hmac.digest(self._key, body.encode(), "sha256"))


class EndedSessions:
    """The sessions logged out before their expiry, kept in the shared counters.

    A session found live is trusted for ``recheck_after`` seconds before the backend is asked
    again (one read per request would add a backend round trip to every call): a logout
    takes effect at once on its own instance, and within that time on the others.
    """

    def __init__(self, counters: SharedCounters, recheck_after: float = RECHECK_AFTER) -> None:
        self.counters = counters
        self.recheck_after = recheck_after
        self._live_until: dict[str, float] = {}  # session id -> monotonic deadline

    async def end(self, identity: Identity) -> None:
        if identity.csrf is None or identity.expires is None:
            return
        self._live_until.pop(identity.csrf, None)
        left = identity.expires - time.time() + CLOCK_SKEW
        await self.counters.add("session-ended:" + identity.csrf, 1, max(1.0, left))

    async def ended(self, identity: Identity) -> bool:
        session = identity.csrf
        if session is None:
            return False
        now = time.monotonic()
        if self._live_until.get(session, 0.0) > now:
            return False
        if (await self.counters.get("session-ended:" + session))[0] > 0:
            return True
        if len(self._live_until) >= MAX_TRUSTED:
            self._live_until = {k: t for k, t in self._live_until.items() if t > now}
            if len(self._live_until) >= MAX_TRUSTED:
                self._live_until.clear()
        self._live_until[session] = now + self.recheck_after
        return False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
