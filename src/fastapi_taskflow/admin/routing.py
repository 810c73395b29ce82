"""The route class of every admin route: size limit, ``nosniff``, and JSON for its errors."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute, APIRouter
from pydantic import AfterValidator, StringConstraints
from starlette.types import Message, Receive, Scope, Send

from ..errors import BackendError
from .inputs import BadInput
from .request_checks import MAX_BODY, declared_length

logger = logging.getLogger("fastapi_taskflow.admin")


def _encodable_id(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("must be valid UTF-8 text (no lone surrogates)") from None
    return text


TaskId = Annotated[
    str, StringConstraints(min_length=1, max_length=200), AfterValidator(_encodable_id)
]
NOSNIFF = (b"x-content-type-options", b"nosniff")


class AdminRoute(APIRoute):
    """Refuses a declared body over ``MAX_BODY`` before auth or parsing (413), marks every
    response ``nosniff``, and maps the admin's own errors: bad input 422 (echoing only what
    JSON can carry), a feature the backend lacks 501, backend down 503."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_nosniff(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == NOSNIFF[0] for name, _ in headers):
                    headers.append(NOSNIFF)
                message = {**message, "headers": headers}
            await send(message)

        declared = declared_length(scope.get("headers", []))
        if declared is not None and declared > MAX_BODY:
            refusal = JSONResponse(
                {"detail": f"the request body is over {MAX_BODY} bytes"}, status_code=413
            )
            await refusal(scope, receive, send_nosniff)
            return
        await super().handle(scope, receive, send_nosniff)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                return validation_response(exc)
            except BadInput as exc:
                return JSONResponse({"detail": str(exc)}, status_code=422)
            except NotImplementedError as exc:  # a custom backend without a feature's primitives
                return JSONResponse({"detail": str(exc)}, status_code=501)
            except (BackendError, OSError) as exc:
                logger.error("task backend failed during %s", request.url.path, exc_info=True)
                return JSONResponse(
                    {"detail": f"the task backend is unavailable: {exc}"}, status_code=503
                )

        return route


def admin_router(path: str, dependencies: list[Any], include_in_schema: bool) -> APIRouter:
    """A router for the task API's routes: under ``path``, behind the admin's checks."""
    return APIRouter(
        prefix=path,
        tags=["tasks"],
        dependencies=dependencies,
        route_class=AdminRoute,
        include_in_schema=include_in_schema,
    )


def validation_response(exc: RequestValidationError) -> Response:
    """FastAPI's 422, minus echoed input JSON cannot carry (a lone surrogate, NaN, 1e400),
    which would otherwise turn a client's mistake into a 500."""
    errors = []
    for error in jsonable_encoder(exc.errors()):
        try:
            json.dumps(error, ensure_ascii=False, allow_nan=False).encode()
        except (ValueError, UnicodeEncodeError):
            error = {k: error[k] for k in ("type", "loc", "msg") if k in error}
            error["loc"] = [_printable(part) for part in error.get("loc", [])]
            error["msg"] = _printable(error.get("msg", ""))
        errors.append(error)
    return JSONResponse({"detail": errors}, status_code=422)


def _printable(value: Any) -> Any:
    """A location or message part, with what UTF-8 cannot encode escaped."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    return value
