"""The task API: JSON routes under ``TaskAdmin(path=...)``.

Reading: the task list (server-side pages and filters), one task, metrics (JSON and Prometheus),
queues, registered tasks, the audit trail. Changing: retry, cancel, bulk retry, retry-failed,
delete history, queue settings. Every change is validated first (422 and nothing changed on
bad input), refused when the admin is read-only (403), and written to the audit trail.

List compatibility: ``GET {path}`` answers a plain JSON list of tasks, as 0.x releases did, so
old clients keep reading it. It is one page (newest first, ``limit`` default 50, max 500); the
next page's cursor is in the ``X-Next-Cursor`` header and a ``Link: <...>; rel="next"`` header.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from ..backends.base import RecordQuery
from ..control import Outcome, cancel_anywhere, retry_elsewhere
from ..errors import ArgumentDecryptionError, UnknownTaskError
from ..models import RETRYABLE_STATUSES, TaskRecord, TaskStatus
from ..serialization import result_view
from .inputs import MAX_LIMIT, BadInput, record_query, window_start
from .metrics import PROMETHEUS_HINT, ThroughputSeries, dashboard_metrics, prometheus_text
from .request_checks import MAX_BODY, read_body
from .routing import TaskId, admin_router

if TYPE_CHECKING:
    from ..manager import TaskManager
    from .audit import AuditLog

logger = logging.getLogger("fastapi_taskflow.admin")

RETRY_FAILED_CAP = 10_000


_UNIT = {"min": "minutes", "hour": "hours", "day": "days"}


class BulkRetryBody(BaseModel):
    """Tasks to run again."""

    model_config = ConfigDict(extra="forbid")
    task_ids: list[TaskId] = Field(min_length=1, max_length=1000)


class QueuePatch(BaseModel):
    """New caps for a queue; null means no cap. Give at least one."""

    model_config = ConfigDict(extra="forbid", strict=True)
    concurrency: int | None = Field(default=None, ge=1, le=1_000_000)
    max_size: int | None = Field(default=None, ge=1, le=1_000_000)


Body = TypeVar("Body", bound=BaseModel)


def json_body(model: type[Body]) -> Callable[[Request], Awaitable[Body]]:
    """A dependency reading and validating the JSON body. As a dependency it runs after the
    router's auth, so nobody unauthenticated makes the server read or parse a body; the size
    cap (413) bounds what an authenticated one can send."""

    async def parse(request: Request) -> Body:
        raw = await read_body(request, MAX_BODY)
        try:
            return model.model_validate_json(raw)
        except ValidationError as exc:
            raise RequestValidationError(_body_errors(exc)) from None

    return parse


def _body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors as FastAPI words them (under ``body``). A body that is not JSON is not
    echoed (it may be any bytes, up to the cap); AdminRoute drops any other input JSON cannot
    carry back."""
    errors: list[dict[str, Any]] = []
    for error in exc.errors(include_url=False):
        shown: dict[str, Any] = {**error, "loc": ("body", *error["loc"])}
        if error["type"] == "json_invalid":
            shown.pop("input", None)
        errors.append(shown)
    return errors


def body_doc(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads it through :func:`json_body`."""
    schema = {"content": {"application/json": {"schema": model.model_json_schema()}}}
    return {"requestBody": {"required": True, **schema}}


# Annotated, so the parameter order does not matter: FastAPI runs the router's auth first and
# the endpoint's dependencies in their order (the write check before the body).
BulkRetryInput = Annotated[BulkRetryBody, Depends(json_body(BulkRetryBody))]
QueuePatchInput = Annotated[QueuePatch, Depends(json_body(QueuePatch))]


def json_response(
    data: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return Response(body.encode(), status_code, headers, media_type="application/json")


class TaskApi:
    """Builds the JSON routes; the route functions are thin and call the methods below."""

    def __init__(
        self,
        current_manager: Callable[[], TaskManager],
        audit: AuditLog,
        *,
        include_args: bool,
        read_only: bool,
        read_only_users: Collection[str] = (),
        series: ThroughputSeries,
        include_results: bool = True,
    ) -> None:
        self._current_manager = current_manager
        self.audit = audit
        self.include_args = include_args
        self.include_results = include_results
        self.read_only = read_only
        self.read_only_users = frozenset(read_only_users)
        self.series = series

    @property
    def manager(self) -> TaskManager:
        """The manager behind the API now (a lazily given one changes between app runs)."""
        return self._current_manager()

    # ---- helpers ---------------------------------------------------------------------------

    def writable(self, request: Request) -> str:
        """Dependency of every mutating route: 403 when read-only, else the actor's name."""
        if self.read_only:
            raise HTTPException(status_code=403, detail="the task API is read-only")
        identity = getattr(request.state, "taskflow_identity", None)
        user = identity.user if identity is not None else "anonymous"
        if user in self.read_only_users:
            raise HTTPException(status_code=403, detail=f"{user} may only read the task API")
        return user

    def task_json(
        self, record: TaskRecord, request: Request, *, with_result: bool = False
    ) -> dict[str, Any]:
        """A record for the API: arguments redacted; sealed errors opened only for a person
        who proved who they are (never on an open API); ``"result"`` for one task only (a
        list never decodes every row's result)."""
        identity = getattr(request.state, "taskflow_identity", None)
        reveal = identity is not None and identity.via != "open"
        return self.manager.record_dict(
            record,
            include_args=self.include_args,
            reveal_errors=reveal,
            include_result=with_result and self.include_results,
        )

    def result_response(self, record: TaskRecord) -> Response:
        """The result itself: JSON, or the raw bytes for a ``bytes`` value."""
        if not self.include_results:
            raise HTTPException(
                status_code=403, detail="results are hidden (display_results is off)"
            )
        if not record.status.finished:
            raise HTTPException(
                status_code=409, detail=f"the task has not finished ({record.status.value})"
            )
        if record.status is not TaskStatus.SUCCESS:
            raise HTTPException(
                status_code=409,
                detail=f"the task did not succeed ({record.status.value}): {record.error}",
            )
        manager = self.manager
        try:
            value = manager.results.value(record)
        except (ValueError, ArgumentDecryptionError) as exc:
            raise HTTPException(
                status_code=409, detail=f"the result cannot be read: {exc}"
            ) from None
        if value is None and not record.has_result and record.result_note is not None:
            raise HTTPException(status_code=404, detail=f"no result kept: {record.result_note}")
        # no-store: a result is the task's own data, never kept by a cache on the way.
        headers = {"Cache-Control": "no-store"}
        if isinstance(value, bytes):
            return Response(value, media_type="application/octet-stream", headers=headers)
        return json_response(manager.shown_result(result_view(value)), headers=headers)

    async def find(self, task_id: str) -> TaskRecord:
        record = await self.manager.get_record(task_id)
        if record is None:
            raise HTTPException(status_code=404, detail="Task not found")
        return record

    async def retry_one(self, task_id: str) -> tuple[str | None, str]:
        """(new task id, "") or (None, why not)."""
        try:
            handle = await self.manager.retry(task_id, source="retry")
        except UnknownTaskError as exc:
            return None, str(exc)
        except (ValueError, ArgumentDecryptionError) as exc:
            return None, str(exc)
        return handle.task_id, ""

    def _here(self) -> dict[str, Any]:
        return _delivery(Outcome("here", self.manager.instance_id))

    async def _retry_elsewhere(self, task_id: str, who: str) -> Response:
        """A task this instance cannot see: the instance that holds it retries it."""
        outcome = await retry_elsewhere(self.manager, task_id)
        if outcome.where == "nowhere":
            raise HTTPException(status_code=404, detail="Task not found")
        await self.audit.record(
            "retry",
            task_id,
            who,
            f"refused: {outcome.detail}" if outcome.detail else "ok (owner)",
            new_task_id=outcome.new_task_id,
            instance=outcome.instance_id,
        )
        if outcome.new_task_id is None:
            raise HTTPException(status_code=409, detail=outcome.detail)
        return json_response(
            {"task_id": outcome.new_task_id, "task": outcome.task, **_delivery(outcome)}
        )

    # ---- routes ----------------------------------------------------------------------------

    def router(
        self, path: str, dependencies: list[Any], include_in_schema: bool = True
    ) -> APIRouter:
        router = admin_router(path, dependencies, include_in_schema)
        actor = Depends(self.writable)
        self._reading_routes(router)
        self._changing_routes(router, actor)
        self._task_routes(router, actor)  # last: /{task_id} would shadow the fixed paths
        return router

    def _reading_routes(self, router: APIRouter) -> None:
        # Every route asks ``self.manager`` when it runs: a DI container builds a new manager
        # on each lifespan run, and a manager captured here would be the first, stopped one.
        @router.get("", summary="List tasks (one page, newest first)")
        async def list_tasks(
            request: Request,
            status: Annotated[str | None, Query(description="one task status")] = None,
            func_name: Annotated[str | None, Query(max_length=500)] = None,
            queue: Annotated[str | None, Query(max_length=200)] = None,
            tag: Annotated[str | None, Query(description="key:value", max_length=500)] = None,
            q: Annotated[
                str | None, Query(description="text in name, id or error", max_length=500)
            ] = None,
            since: Annotated[str | None, Query(description="ISO datetime or 6h/7d")] = None,
            until: Annotated[str | None, Query(description="ISO datetime or 6h/7d")] = None,
            limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 50,
            cursor: Annotated[str | None, Query(max_length=1000)] = None,
        ) -> Response:
            query = record_query(
                status=status,
                func_name=func_name,
                queue=queue,
                tag=tag,
                q=q,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
            page = await self.manager.list_records(query)
            headers = {"Cache-Control": "no-store"}
            if page.next_cursor:
                # A path-absolute link from the mount point: the Host header is the client's
                # to choose, and a link built from it could point anywhere.
                following = request.url.include_query_params(cursor=page.next_cursor).query
                base = request.scope.get("root_path", "") + router.prefix
                headers["X-Next-Cursor"] = page.next_cursor
                headers["Link"] = f'<{base}?{following}>; rel="next"'
            records = [self.task_json(r, request) for r in page.records]
            return json_response(records, headers=headers)

        @router.get("/metrics", summary="Counts, success rate, duration percentiles")
        async def get_metrics() -> Response:
            return json_response(await dashboard_metrics(self.manager, self.series))

        @router.get("/metrics/prometheus", summary="Metrics in the Prometheus text format")
        async def get_prometheus() -> Response:
            try:
                manager = self.manager
                body, content_type = prometheus_text(manager, await manager.read_stats())
            except ImportError:
                return JSONResponse({"detail": PROMETHEUS_HINT}, status_code=501)
            return Response(body, media_type=content_type)

        @router.get("/queues", summary="Queues: caps, running, waiting, counts")
        async def get_queues() -> Response:
            return json_response(await self.manager.read_queue_stats())

        @router.get("/instances", summary="Live instances on the backend (or this one alone)")
        async def get_instances() -> Response:
            instances = await self.manager.instances()
            return json_response([i.to_dict() for i in instances])

        @router.get("/audit", summary="Actions taken through this API, newest first")
        async def get_audit(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
            return json_response([e.to_dict() for e in await self.audit.entries(limit)])

        @router.get("/registry", summary="Registered tasks and schedules")
        async def get_registry() -> Response:
            return json_response(registry_view(self.manager))

    def _task_routes(self, router: APIRouter, actor: Any) -> None:
        @router.get("/{task_id}", summary="One task")
        async def get_task(task_id: TaskId, request: Request) -> Response:
            # no-store: an authenticated reader may get the error (and the result) in clear.
            record = await self.find(task_id)
            body = self.task_json(record, request, with_result=True)
            return json_response(body, headers={"Cache-Control": "no-store"})

        @router.get("/{task_id}/result", summary="A finished task's return value")
        async def get_task_result(task_id: TaskId) -> Response:
            return self.result_response(await self.find(task_id))

        @router.post("/{task_id}/retry", summary="Run a failed/interrupted/cancelled task again")
        async def retry_task(task_id: TaskId, request: Request, who: str = actor) -> Response:
            record = await self.manager.get_record(task_id)
            if record is None:
                return await self._retry_elsewhere(task_id, who)
            new_id, why = await self.retry_one(task_id)
            await self.audit.record(
                "retry",
                task_id,
                who,
                "ok" if new_id else f"refused: {why}",
                new_task_id=new_id,
                func_name=record.func_name,
            )
            if new_id is None:
                status = 400 if record.status not in RETRYABLE_STATUSES else 409
                raise HTTPException(status_code=status, detail=why)
            new = self.manager.store.get(new_id) or await self.find(new_id)
            return json_response(
                {"task_id": new_id, "task": self.task_json(new, request), **self._here()}
            )

        @router.post("/{task_id}/cancel", summary="Cancel a pending or running task")
        async def cancel_task(task_id: TaskId, request: Request, who: str = actor) -> Response:
            record = await self.manager.get_record(task_id)
            outcome = (
                Outcome("nowhere")
                if record is not None and record.status.finished
                else await cancel_anywhere(self.manager, task_id)
            )
            if outcome.where == "nowhere" and record is None:
                raise HTTPException(status_code=404, detail="Task not found")
            await self.audit.record(
                "cancel",
                task_id,
                who,
                "refused" if outcome.where == "nowhere" else f"ok ({outcome.where})",
                status=record.status.value if record is not None else "unknown here",
                instance=outcome.instance_id,
            )
            if outcome.where == "nowhere":
                assert record is not None
                if record.status.finished:
                    raise HTTPException(
                        status_code=400,
                        detail="Only pending or running tasks can be cancelled. "
                        f"Current status: {record.status.value}",
                    )
                # Known as unfinished here, but no live instance holds it (yet): say so.
                raise HTTPException(
                    status_code=409,
                    detail=f"task {task_id} is {record.status.value}, but no live instance "
                    "holds it now; try again in a moment",
                )
            task = outcome.task
            if task is None and record is not None:
                task = self.task_json(record, request)
            return json_response({"task_id": task_id, "task": task, **_delivery(outcome)})

    def _changing_routes(self, router: APIRouter, actor: Any) -> None:
        @router.post(
            "/bulk-retry", summary="Retry the given tasks", openapi_extra=body_doc(BulkRetryBody)
        )
        async def bulk_retry(body: BulkRetryInput, who: str = actor) -> Response:
            ids = list(dict.fromkeys(body.task_ids))
            result = await self._retry_many(ids)
            await self.audit.record(
                "bulk_retry",
                "bulk",
                who,
                f"{result['dispatched']} dispatched",
                skipped=result["skipped"],
                task_ids=ids[:20],
            )
            return json_response(result)

        @router.post("/retry-failed", summary="Retry failed and interrupted tasks of a window")
        async def retry_failed(
            who: str = actor,
            since: Annotated[str, Query(description="<N>m, <N>h, <N>d or all")] = "6h",
            func_name: Annotated[str | None, Query(max_length=500)] = None,
        ) -> Response:
            cutoff = None if since == "all" else window_start("since", since)
            ids, truncated = await self._failed_ids(cutoff, func_name)
            result = await self._retry_many(ids)
            result["truncated"] = truncated
            await self.audit.record(
                "retry_failed",
                "bulk",
                who,
                f"{result['dispatched']} dispatched",
                since=since,
                func_name=func_name,
                skipped=result["skipped"],
            )
            return json_response(result)

        @router.delete("/history", summary="Delete finished tasks older than a window (or all)")
        async def delete_history(
            who: str = actor,
            value: Annotated[int | None, Query(gt=0, le=100_000)] = None,
            unit: Annotated[Literal["min", "hour", "day"] | None, Query()] = None,
            older_than: Annotated[str | None, Query(description="e.g. 30m, 6h, 7d")] = None,
            all: Annotated[bool, Query(description="delete every finished task")] = False,
        ) -> Response:
            before = _history_cutoff(value, unit, older_than, all)
            counts = await self.manager.clear_history(before)
            result = {"deleted": counts["store"] + counts["backend"], **counts}
            await self.audit.record(
                "delete_history",
                "history",
                who,
                f"{result['deleted']} deleted",
                before=before.isoformat() if before else "all",
            )
            return json_response(result)

        @router.patch(
            "/queues/{name}",
            summary="Change a queue's concurrency or max_size live",
            openapi_extra=body_doc(QueuePatch),
        )
        async def patch_queue(
            name: Annotated[str, StringConstraints(min_length=1, max_length=200)],
            body: QueuePatchInput,
            who: str = actor,
        ) -> Response:
            changes = {field: getattr(body, field) for field in body.model_fields_set}
            if not changes:
                raise BadInput("nothing to change: give concurrency and/or max_size")
            if name not in self.manager.queue_stats():
                raise HTTPException(status_code=404, detail=f"no queue named {name!r}")
            try:
                config = await self.manager.change_queue(name, **changes)
            except (ValueError, TypeError) as exc:
                await self.audit.record("queue_config", name, who, f"refused: {exc}", **changes)
                raise BadInput(str(exc)) from None
            await self.audit.record(
                "queue_config",
                name,
                who,
                "ok",
                concurrency=config.concurrency,
                max_size=config.max_size,
            )
            stats = (await self.manager.read_queue_stats())[name]
            return json_response({"name": name, **stats, "scope": self.manager.queue_scope})

    async def _retry_many(self, ids: list[str]) -> dict[str, Any]:
        results: list[dict[str, str]] = []
        errors: list[dict[str, str]] = []
        for task_id in ids:
            new_id, why = await self.retry_one(task_id)
            if new_id is None:
                errors.append({"task_id": task_id, "detail": why})
            else:
                results.append({"original_task_id": task_id, "new_task_id": new_id})
        return {
            "dispatched": len(results),
            "skipped": len(errors),
            "results": results,
            "errors": errors,
        }

    async def _failed_ids(
        self, cutoff: datetime | None, func_name: str | None
    ) -> tuple[list[str], bool]:
        ids: list[str] = []
        for status in (TaskStatus.FAILED, TaskStatus.INTERRUPTED):
            cursor = None
            while True:
                page = await self.manager.list_records(
                    RecordQuery(
                        status=status.value,
                        func_name=func_name,
                        since=cutoff,
                        limit=MAX_LIMIT,
                        cursor=cursor,
                    )
                )
                ids.extend(r.task_id for r in page.records)
                if len(ids) >= RETRY_FAILED_CAP:
                    return ids[:RETRY_FAILED_CAP], True
                cursor = page.next_cursor
                if cursor is None:
                    break
        return ids, False


def _delivery(outcome: Outcome) -> dict[str, Any]:
    """Where a command took effect, for the API's answer."""
    where = {"here": "applied on this instance", "owner": "sent to the instance running it"}
    return {
        "delivery": outcome.where,
        "instance_id": outcome.instance_id,
        "detail": where.get(outcome.where, ""),
    }


def _history_cutoff(
    value: int | None, unit: str | None, older_than: str | None, everything: bool
) -> datetime | None:
    given = sum([value is not None or unit is not None, older_than is not None, everything])
    if given != 1:
        raise BadInput(
            "say what to delete with exactly one of: value=&unit= (min, hour, day), "
            "older_than=6h, or all=true"
        )
    if everything:
        return None
    if older_than is not None:
        return window_start("older_than", older_than)
    if value is None or unit is None:
        raise BadInput("value and unit go together, e.g. value=7&unit=day")
    try:
        return datetime.now(UTC) - timedelta(**{_UNIT[unit]: value})
    except OverflowError:
        raise BadInput("that window is too large") from None


def registry_view(manager: TaskManager) -> dict[str, Any]:
    tasks = []
    for definition in sorted(manager.registry.definitions(), key=lambda d: d.name):
        o = definition.options
        tasks.append(
            {
                "name": definition.name,
                "executor": definition.executor,
                "retries": o.retries,
                "delay": o.delay,
                "backoff": o.backoff,
                "max_delay": o.max_delay,
                "timeout": o.timeout,
                "queue": o.queue or "default",
                "priority": o.priority,
                "persist": o.persist,
                "eager": o.eager,
                "requeue_on_interrupt": o.requeue_on_interrupt,
            }
        )
    schedules = [
        {
            "name": s.task.name,
            "every": s.every,
            "cron": s.cron,
            "timezone": s.timezone,
            "run_on_startup": s.run_on_startup,
        }
        for s in _schedules(manager)
    ]
    return {"tasks": tasks, "schedules": schedules}


def _schedules(manager: TaskManager) -> list[Any]:
    found = getattr(manager.registry, "schedules", [])
    return list(found() if callable(found) else found)
