"""Who may use the task API and the dashboard.

``TaskAdmin(auth=...)`` takes a ``(username, password)`` pair, a list of pairs, or a
:class:`TaskAuthBackend`. API clients may also send ``Authorization: Bearer`` with a token from
``POST {path}/auth/login`` (JSON) or one of ``api_tokens``. Browsers get a signed, HttpOnly,
SameSite=Strict cookie (Secure over HTTPS).

Every request that changes something, in every mode (``auth``, ``dependencies=[...]`` or none),
must prove it comes from this origin, except with a bearer token (browsers never attach one on
their own): with the session cookie, ``X-CSRF-Token`` must carry the session's token; otherwise
``X-CSRF-Token`` (any value) or a browser's ``Sec-Fetch-Site: same-origin`` / own ``Origin``.
A browser saying another origin is refused outright, the login and logout included.

Sessions end at logout, when the user's credentials change or the user is gone, and after
``token_expiry`` (see :mod:`.sessions`); failed logins are limited (see :mod:`.limiter`).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import hmac
import inspect
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ..errors import ConfigurationError
from .limiter import LoginLimiter
from .request_checks import (
    CSRF_HEADER,
    MAX_LOGIN_BODY,
    SAFE_METHODS,
    cross_origin,
    proves_same_origin,
    read_body,
)
from .sessions import EndedSessions, Identity, SessionSigner
from .shared import SharedCounters

if TYPE_CHECKING:
    from ..manager import TaskManager

logger = logging.getLogger("fastapi_taskflow.admin")

COOKIE_NAME = "taskflow_session"
MIN_SECRET_BYTES = 32
BEARER_VIA = frozenset({"bearer", "token"})

__all__ = ["COOKIE_NAME", "AdminAuth", "Identity", "SessionSigner", "TaskAuthBackend"]


class TaskAuthBackend(abc.ABC):
    """Checks a username and password; subclass it for your own user store.

    ``authenticate_user`` may be a plain or an ``async`` method.
    """

    @abc.abstractmethod
    def authenticate_user(self, username: str, password: str) -> bool | Awaitable[bool]:
        """True when the credentials are valid."""

    def credential_version(self, username: str) -> str | Awaitable[str | None] | None:
        """Something that changes when the user's credentials change (a password hash, a
        counter); None when the user no longer exists. Checked on every request: a change ends
        the user's sessions. The default, ``""``, ends sessions only at logout or expiry."""
        return ""


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

    def credential_version(self, username: str) -> str | None:
        digest = self._digests.get(username)
        return digest.hex() if digest is not None else None

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

    def credential_version(self, username: str) -> str | Awaitable[str | None] | None:
        version = getattr(self._inner, "credential_version", None)
        if version is None:
            return ""
        result: str | Awaitable[str | None] | None = version(username)
        return result


class AdminAuth:
    """Authentication, same-origin checks and sessions for one ``TaskAdmin``."""

    def __init__(
        self,
        *,
        auth: Any,
        secret_key: str | bytes | None,
        token_expiry: int,
        api_tokens: Sequence[str] | Mapping[str, str] | None,
        path: str,
        current_manager: Callable[[], TaskManager],
    ) -> None:
        self.backend = resolve_backend(auth)
        self.api_tokens = _named_tokens(api_tokens)
        self.enabled = self.backend is not None or bool(self.api_tokens)
        _check_secret(secret_key)
        if secret_key is None and self.backend is not None:
            logger.warning(
                "TaskAdmin auth has no secret_key: sessions are signed with a random key, so "
                "they end at restart and other workers reject them. Set admin.secret_key."
            )
        self.signer = SessionSigner(secret_key or secrets.token_bytes(32), token_expiry)
        self.token_expiry = token_expiry
        self.path = path
        counters = SharedCounters(current_manager)
        self.limiter = LoginLimiter(counters)
        self.sessions = EndedSessions(counters)

    # ---- identifying requests --------------------------------------------------------------

    async def identify(self, request: Request) -> Identity | None:
        """Who sent the request: an api token, a bearer session or the cookie; None if no one."""
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and credential:
            credential = credential.strip()
            sent = credential.encode("utf-8", "surrogatepass")
            for name, token in self.api_tokens.items():
                if hmac.compare_digest(token.encode(), sent):
                    return Identity(name, "token")
            identity = self.signer.verify(credential)
            if identity is not None:
                identity = dataclasses.replace(identity, via="bearer")
        else:
            cookie = request.cookies.get(COOKIE_NAME)
            identity = self.signer.verify(cookie) if cookie else None
        if identity is None or not await self.still_valid(identity):
            return None
        return identity

    async def still_valid(self, identity: Identity) -> bool:
        """Not logged out, and the user's credentials are still the ones it was issued for."""
        if await self.sessions.ended(identity):
            return False
        stamp = await self._stamp(identity.user)
        sent = (identity.stamp or "").encode("utf-8", "surrogatepass")
        return stamp is not None and hmac.compare_digest(stamp.encode(), sent)

    async def _stamp(self, user: str) -> str | None:
        """The stamp of the user's credentials now; None when the user is gone."""
        if self.backend is None:
            return None
        try:
            version = self.backend.credential_version(user)
            if inspect.isawaitable(version):
                version = await version
        except Exception:
            logger.error("the TaskAdmin auth backend failed; session refused", exc_info=True)
            return None
        return self.signer.stamp(user, version) if isinstance(version, str) else None

    async def guard(self, request: Request) -> None:
        """Route dependency: 401 without credentials, 403 without proof of same origin."""
        if not self.enabled:
            identity = Identity(_outside_user(request), "open")
        else:
            found = await self.identify(request)
            if found is None:
                raise HTTPException(
                    status_code=401,
                    detail="Not authenticated",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            identity = found
        if request.method not in SAFE_METHODS:
            check_same_origin(request, identity)
        request.state.taskflow_identity = identity

    # ---- login and logout ------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        """JSON ``{"username","password"}`` -> a bearer token; a form -> the session cookie."""
        is_json = request.headers.get("content-type", "").split(";")[0].strip() == (
            "application/json"
        )
        refused = cross_origin(request)
        if refused is not None:
            # Signing a victim's browser in as the attacker ("login CSRF") needs another origin.
            return JSONResponse({"detail": f"cross-origin login refused ({refused})"}, 403)
        address = request.client.host if request.client else "?"
        username, password = await _credentials(request, is_json)
        keys = self.limiter.keys(address, username)
        wait = await self.limiter.retry_after(keys)
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
            await self.limiter.failed(keys)
            logger.warning("failed dashboard login for %r from %s", username, address)
            if is_json:
                return JSONResponse({"detail": "invalid username or password"}, status_code=401)
            return self._to_login("invalid", 303)
        await self.limiter.succeeded(self.limiter.user_keys(address, username))
        token, csrf = self.signer.issue(username, await self._stamp(username) or "")
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

    async def logout(self, request: Request) -> Response:
        """End the session of the cookie or bearer token (on every instance) and drop the
        cookie. With the cookie it needs the CSRF token, so no other page can log you out."""
        identity = await self.identify(request) if self.enabled else None
        if identity is not None:
            check_same_origin(request, identity)
            await self.sessions.end(identity)
        elif (refused := cross_origin(request)) is not None:
            raise HTTPException(status_code=403, detail=f"cross-origin request refused ({refused})")
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


def check_same_origin(request: Request, identity: Identity) -> None:
    """403 unless a request that changes something proves it comes from this origin."""
    if identity.via in BEARER_VIA:
        return
    refused = cross_origin(request)
    if refused is not None:
        raise HTTPException(status_code=403, detail=f"cross-origin request refused ({refused})")
    if identity.via == "cookie":
        sent = request.headers.get(CSRF_HEADER, "").encode("utf-8", "surrogatepass")
        if not sent or not hmac.compare_digest(sent, (identity.csrf or "").encode()):
            raise HTTPException(status_code=403, detail="missing or wrong X-CSRF-Token header")
    elif not proves_same_origin(request):
        raise HTTPException(
            status_code=403,
            detail="changes need proof of the same origin: send an X-CSRF-Token header",
        )


def _check_secret(secret_key: str | bytes | None) -> None:
    if secret_key is None:
        return
    if not isinstance(secret_key, str | bytes):
        raise ConfigurationError("secret_key must be a string or bytes")
    size = len(secret_key.encode() if isinstance(secret_key, str) else secret_key)
    if size < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"secret_key must be at least {MIN_SECRET_BYTES} bytes (got {size}): a short key "
            "can be recovered offline from one token; use secrets.token_urlsafe(32)"
        )


async def _credentials(request: Request, is_json: bool) -> tuple[str | None, str | None]:
    body = await read_body(request, MAX_LOGIN_BODY)
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
