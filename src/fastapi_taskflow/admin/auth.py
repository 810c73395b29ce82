"""Who may use the task API and the dashboard.

``TaskAdmin(auth=...)`` takes any of these forms: a ``(username, password)`` pair, a list of
pairs, or a :class:`TaskAuthBackend`. API clients may also send ``Authorization: Bearer`` with a
token from ``POST {path}/auth/login`` (JSON) or one of ``api_tokens``. Browsers get a signed,
HttpOnly, SameSite=Strict cookie (Secure over HTTPS); a request that changes something with that
cookie must carry the session's CSRF token in ``X-CSRF-Token``. Failed logins are rate limited
per client address and per username. Sessions are stateless (HMAC-SHA256 over the user, the
expiry and the CSRF nonce), so every worker sharing ``secret_key`` accepts them.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import hmac
import inspect
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ..errors import ConfigurationError

logger = logging.getLogger("fastapi_taskflow.admin")

COOKIE_NAME = "taskflow_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TaskAuthBackend(abc.ABC):
    """Checks a username and password; subclass it for your own user store.

    ``authenticate_user`` may be a plain or an ``async`` method.
    """

    @abc.abstractmethod
    def authenticate_user(self, username: str, password: str) -> bool | Awaitable[bool]:
        """True when the credentials are valid."""


class PasswordBackend(TaskAuthBackend):
    """Fixed ``(username, password)`` pairs, compared in constant time."""

    def __init__(self, credentials: Sequence[tuple[str, str]]) -> None:
        self._digests: dict[str, bytes] = {}
        for pair in credentials:
            if (
                not isinstance(pair, tuple | list)
                or len(pair) != 2
                or not all(isinstance(part, str) and part for part in pair)
            ):
                raise ConfigurationError(
                    "auth: each credential must be a (username, password) pair of non-empty strings"
                )
            self._digests[pair[0]] = _digest(pair[1])

    def authenticate_user(self, username: str, password: str) -> bool:
        expected = self._digests.get(username)
        supplied = _digest(password)
        if expected is None:
            hmac.compare_digest(supplied, supplied)  # same work for unknown users
            return False
        return hmac.compare_digest(expected, supplied)


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def resolve_backend(auth: Any) -> TaskAuthBackend | None:
    """``auth=`` as a backend: None, a pair, a list of pairs, or a backend instance."""
    if auth is None:
        return None
    if isinstance(auth, TaskAuthBackend):
        return auth
    if isinstance(auth, tuple) and len(auth) == 2 and all(isinstance(a, str) for a in auth):
        return PasswordBackend([auth])
    if isinstance(auth, list) and auth:
        return PasswordBackend(auth)
    if hasattr(auth, "authenticate_user") and callable(auth.authenticate_user):
        return _DuckBackend(auth)
    raise ConfigurationError(
        "auth must be a (username, password) tuple, a non-empty list of such tuples, or a "
        f"TaskAuthBackend instance; got {type(auth).__name__}"
    )


class _DuckBackend(TaskAuthBackend):
    """Any object with ``authenticate_user(username, password)``, a TaskAuthBackend or not."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def authenticate_user(self, username: str, password: str) -> bool | Awaitable[bool]:
        result: bool | Awaitable[bool] = self._inner.authenticate_user(username, password)
        return result


@dataclass(frozen=True, slots=True)
class Identity:
    """Who made a request and how they proved it."""

    user: str
    via: str  # "cookie", "bearer", "token", "dependency" or "open"
    csrf: str | None = None


class SessionSigner:
    """Stateless signed sessions: ``payload.signature``, both base64url."""

    def __init__(self, secret: str | bytes) -> None:
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        self._key = hmac.new(raw, b"fastapi-taskflow session v1", hashlib.sha256).digest()

    def issue(self, user: str, expiry: int, now: float | None = None) -> tuple[str, str]:
        """A new token for ``user`` and the CSRF nonce inside it."""
        csrf = secrets.token_urlsafe(24)
        payload = {"u": user, "exp": int((now or time.time()) + expiry), "c": csrf}
        body = _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}", csrf

    def verify(self, token: str, now: float | None = None) -> Identity | None:
        body, _, signature = token.partition(".")
        if not body or not signature or not hmac.compare_digest(self._sign(body), signature):
            return None
        try:
            payload = json.loads(_unb64(body))
            user, expires, csrf = payload["u"], payload["exp"], payload["c"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(user, str) or not isinstance(expires, int) or not isinstance(csrf, str):
            return None
        if expires <= (now or time.time()):
            return None
        return Identity(user, "cookie", csrf)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class LoginLimiter:
    """At most ``max_failures`` failed logins per ``window`` seconds per address and username."""

    def __init__(self, max_failures: int = 5, window: float = 60.0, max_keys: int = 10_000):
        self.max_failures = max_failures
        self.window = window
        self._max_keys = max_keys
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, *keys: str, now: float | None = None) -> int:
        """Seconds until one of ``keys`` may try again; 0 when none is blocked."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            stamps = self._failures.get(key)
            if stamps is None:
                continue
            while stamps and stamps[0] <= now - self.window:
                stamps.popleft()
            if len(stamps) >= self.max_failures:
                wait = max(wait, stamps[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, *keys: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in keys:
            stamps = self._failures.pop(key, None) or deque(maxlen=self.max_failures)
            stamps.append(now)
            self._failures[key] = stamps
        while len(self._failures) > self._max_keys:
            self._failures.popitem(last=False)

    def succeeded(self, *keys: str) -> None:
        for key in keys:
            self._failures.pop(key, None)


class AdminAuth:
    """Authentication and CSRF for one ``TaskAdmin``."""

    def __init__(
        self,
        *,
        auth: Any,
        secret_key: str | bytes | None,
        token_expiry: int,
        api_tokens: Sequence[str] | Mapping[str, str] | None,
        path: str,
    ) -> None:
        self.backend = resolve_backend(auth)
        self.api_tokens = _named_tokens(api_tokens)
        self.enabled = self.backend is not None or bool(self.api_tokens)
        if secret_key is not None and (
            not isinstance(secret_key, str | bytes) or len(secret_key) < 16
        ):
            raise ConfigurationError("secret_key must be a string of at least 16 characters")
        if secret_key is None and self.backend is not None:
            logger.warning(
                "TaskAdmin auth has no secret_key: sessions are signed with a random key, so "
                "they end at restart and other workers reject them. Set admin.secret_key."
            )
        self.signer = SessionSigner(secret_key or secrets.token_bytes(32))
        self.token_expiry = token_expiry
        self.path = path
        self.limiter = LoginLimiter()

    # ---- identifying requests --------------------------------------------------------------

    def identify(self, request: Request) -> Identity | None:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and credential:
            credential = credential.strip()
            for name, token in self.api_tokens.items():
                if hmac.compare_digest(token.encode(), credential.encode()):
                    return Identity(name, "token")
            identity = self.signer.verify(credential)
            return Identity(identity.user, "bearer") if identity else None
        cookie = request.cookies.get(COOKIE_NAME)
        return self.signer.verify(cookie) if cookie else None

    async def guard(self, request: Request) -> None:
        """Route dependency: 401 without credentials, 403 without the CSRF token."""
        if not self.enabled:
            request.state.taskflow_identity = Identity(_outside_user(request), "open")
            return
        identity = self.identify(request)
        if identity is None:
            raise HTTPException(
                status_code=401,
                detail="Not authenticated",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if identity.via == "cookie" and request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER, "")
            if not sent or not hmac.compare_digest(sent.encode(), (identity.csrf or "").encode()):
                raise HTTPException(status_code=403, detail="missing or wrong X-CSRF-Token header")
        request.state.taskflow_identity = identity

    # ---- login and logout ------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """JSON ``{"username","password"}`` -> a bearer token; a form -> the session cookie."""
        is_json = request.headers.get("content-type", "").split(";")[0].strip() == (
            "application/json"
        )
        address = f"addr:{request.client.host if request.client else '?'}"
        username, password = await _credentials(request, is_json)
        keys = (address, f"user:{username}") if username else (address,)
        wait = self.limiter.retry_after(*keys)
        if wait:
            if is_json:
                return JSONResponse(
                    {"detail": f"too many failed logins; try again in {wait} s"},
                    status_code=429,
                    headers={"Retry-After": str(wait)},
                )
            return self._to_login("rate", 429, wait)
        if username is None or password is None:
            if is_json:
                return JSONResponse(
                    {"detail": 'send {"username": ..., "password": ...} as strings'},
                    status_code=422,
                )
            return self._to_login("missing", 303)
        if not await self._check(username, password):
            self.limiter.failed(*keys)
            logger.warning("failed dashboard login for %r from %s", username, address[5:])
            if is_json:
                return JSONResponse({"detail": "invalid username or password"}, status_code=401)
            return self._to_login("invalid", 303)
        self.limiter.succeeded(*keys)
        token, csrf = self.signer.issue(username, self.token_expiry)
        if is_json:
            return JSONResponse(
                {
                    "access_token": token,
                    "token_type": "bearer",
                    "expires_in": self.token_expiry,
                    "csrf_token": csrf,
                }
            )
        response = RedirectResponse(f"{self.path}/dashboard", status_code=303)
        response.set_cookie(
            COOKIE_NAME,
            token,
            max_age=self.token_expiry,
            path=self.path or "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def logout(self, request: Request) -> Response:
        response = RedirectResponse(f"{self.path}/auth/login", status_code=303)
        response.delete_cookie(
            COOKIE_NAME,
            path=self.path or "/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def _to_login(self, error: str, status: int, retry_after: int = 0) -> Response:
        headers = {"Retry-After": str(retry_after)} if retry_after else None
        if status == 429:
            return JSONResponse(
                {"detail": f"too many failed logins; try again in {retry_after} s"},
                status_code=429,
                headers=headers,
            )
        return RedirectResponse(f"{self.path}/auth/login?error={error}", status_code=status)

    async def _check(self, username: str, password: str) -> bool:
        if self.backend is None:
            return False
        try:
            result = self.backend.authenticate_user(username, password)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            logger.error("the TaskAdmin auth backend failed; login refused", exc_info=True)
            return False
        return result is True


async def _credentials(request: Request, is_json: bool) -> tuple[str | None, str | None]:
    body = await request.body()
    if len(body) > 16_384:
        return None, None
    fields: dict[str, Any]
    if is_json:
        try:
            loaded = json.loads(body or b"null")
        except ValueError:
            return None, None
        fields = loaded if isinstance(loaded, dict) else {}
    else:
        try:
            parsed = parse_qs(body.decode(), keep_blank_values=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            return None, None
        fields = {key: values[0] for key, values in parsed.items()}
    username, password = fields.get("username"), fields.get("password")
    if not isinstance(username, str) or not isinstance(password, str) or not username:
        return None, None
    return username, password


def _named_tokens(tokens: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    if tokens is None:
        return {}
    if isinstance(tokens, str):
        raise ConfigurationError("api_tokens must be a list or a {name: token} mapping")
    named = (
        dict(tokens)
        if isinstance(tokens, Mapping)
        else {f"token-{i + 1}": t for i, t in enumerate(tokens)}
    )
    for name, token in named.items():
        if not isinstance(token, str) or len(token) < 16:
            raise ConfigurationError(f"api_tokens[{name!r}] must be a string of >= 16 characters")
    return named


def _outside_user(request: Request) -> str:
    """The actor when auth is the app's own dependency (or off): what it left on the request."""
    named = getattr(request.state, "taskflow_user", None)
    if isinstance(named, str) and named:
        return named
    user = request.scope.get("user")
    display = getattr(user, "display_name", None) or getattr(user, "username", None)
    return str(display) if display else "anonymous"
