"""Signed sessions and how they end.

A session token is ``payload.signature`` (base64url, HMAC-SHA256 over the payload): the user,
the expiry, the CSRF nonce (which also names the session) and a stamp of the user's
credentials. Every worker sharing ``secret_key`` checks it without a lookup, and then asks:

- has it ended? Logging out records the session's nonce in the shared counters until the
  token would have expired anyway, so every instance on the backend refuses it;
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
        return _b64(hmac.new(self._stamp_key, message, hashlib.sha256).digest()[:12])

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
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


class EndedSessions:
    """The sessions logged out before their expiry, kept in the shared counters."""

    def __init__(self, counters: SharedCounters) -> None:
        self.counters = counters

    async def end(self, identity: Identity) -> None:
        if identity.csrf is None or identity.expires is None:
            return
        left = identity.expires - time.time() + CLOCK_SKEW
        await self.counters.add("session-ended:" + identity.csrf, 1, max(1.0, left))

    async def ended(self, identity: Identity) -> bool:
        if identity.csrf is None:
            return False
        return (await self.counters.get("session-ended:" + identity.csrf))[0] > 0


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
