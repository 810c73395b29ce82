"""Redis on redis.asyncio: history, journal and leases shared by instances on many machines.

Every key lives under ``prefix`` (default ``taskflow``); ``P`` below stands for it.

=============================  ======  ============================================================
key                            type    holds
=============================  ======  ============================================================
``P:rec:<task_id>``            string  the record's JSON (expires after ``record_ttl`` if set)
``P:info``                     hash    task_id -> ``[status, func_name, queue]`` (which sets to fix)
``P:idx``                      zset    every record, score ``created_at``
``P:status:<s>``               zset    records in status ``s``, score ``created_at``
``P:func:<name>``              zset    records of one task function, score ``created_at``
``P:queue:<name>``             zset    records of one queue, score ``created_at``
``P:ended``                    zset    finished records, score ``end_time`` (retention)
``P:journal``                  hash    task_id -> journal entry JSON
``P:journal:owner``            hash    task_id -> owner (no field: released, anyone may claim)
``P:owner:<owner>``            string  an instance's lease; ``PX`` expiry renewed by heartbeat
``P:key:<idempotency key>``    string  the task id holding the key (``PX`` expiry when given)
``P:lock:<name>``              string  the owner of a schedule lock (``PX`` expiry)
``P:meta``                     hash    metadata
``P:stats``                    hash    counters of the stored records (keys in ``stats.py``)
``P:tput``                     hash    ``<bucket>|success`` / ``|failed``: records that ended then
``P:changes``                  stream  one entry per record write batch: ``o`` origin, ``i`` ids
``P:instance:<id>``            string  a live instance's description (``PX`` expiry: its lease)
``P:instances``                set     instance ids that announced themselves (expired ones pruned)
``P:commands``                 stream  commands between instances (trimmed to the last minute)
``P:once``                     hash    run_key -> one-off run JSON
``P:once:at``                  zset    run_key, score ``run_at`` (soonest first)
``P:counter:<key>``           string  a counter (``counter_add``), with its ``PX`` expiry
``P:rate:<limit key>``         string  a rate limit's theoretical arrival time (GCRA), seconds
``P:audit``                    list    TaskAdmin's audit entries as JSON, newest first (trimmed)
=============================  ======  ============================================================

Stats, throughput and the change feed are written by the script that writes the rows, so they
never disagree with them; the feed is trimmed to about ``CHANGES_KEPT`` entries.

Ordering: pages run newest first by (created_at, task_id). Sorted sets order equal scores by
member bytes, so a reverse range gives exactly that order, and a cursor (created_at, task_id)
resumes with the ties below ``task_id`` at that score, then the scores strictly below it.

Everything that must be atomic (record writes that move a record between status sets, claims,
releases, reservations, locks) is one Lua script. The scripts build key names from the prefix,
so this backend targets a single Redis server (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ..compat import renamed_keyword
from ..errors import BackendError
from ..models import FINISHED_STATUSES, TaskStatus
from ..serialization import compact_json
from ..stats import THROUGHPUT_POINTS, add_delta, histogram_bucket, throughput_key
from ..urls import mask_url
from .base import COMMAND_TTL, RecordQuery, Row, TaskBackend

_FINISHED = sorted(s.value for s in FINISHED_STATUSES)
_FINISHED_JSON = json.dumps(_FINISHED)
_BATCH = 500
#: fastapi-taskflow 0.12's default key prefix (its data is imported from there too).
LEGACY_PREFIX = "fbtm:snapshots"
#: 0.12's tables as key infixes: ``<p>:<id>`` hashes in the set ``<p>:_index``, waiting tasks
#: in ``<p>:_pending:<id>`` listed by the set ``<p>:_pending:_index``, one-off runs in
#: ``<p>:_scheduled:<run_key>`` listed by the sorted set ``<p>:_scheduled:_index``.
_LEGACY_INFIX = {
    "task_snapshots": "",
    "task_pending_requeue": ":_pending",
    "task_scheduled_once": ":_scheduled",
}
CHANGES_KEPT = 10_000

# Adds (sign 1) or takes away (sign -1) one row's share of the stats (see stats.py).
_COUNT = """
local function count(stats, st, q, hb, d, sign)
  redis.call('HINCRBY', stats, 's|' .. st, sign)
  redis.call('HINCRBY', stats, 'q|' .. q .. '|' .. st, sign)
  if hb and hb ~= '' then
    redis.call('HINCRBY', stats, 'h|' .. hb, sign)
    redis.call('HINCRBYFLOAT', stats, 'hsum', sign * tonumber(d))
  end
end
"""

# ARGV: prefix, ttl_ms (0: none), origin, the finished statuses as a JSON list, entries kept in
# the change feed, then the rows as one JSON array of 10 strings per row: the 7 columns,
# duration, histogram bucket and throughput bucket ('' for none). One string, not 10 arguments
# a row: redis-py packs every argument one by one. The row's info keeps its stats inputs.
_SAVE = (
    _COUNT
    + """
local p, ttl, origin = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local finished = {}
for _, s in ipairs(cjson.decode(ARGV[4])) do finished[s] = true end
local stats, ids, rows = p .. ':stats', {}, cjson.decode(ARGV[6])
for i = 1, #rows, 10 do
  local id, created, status, func, queue, ended, data, dur, hb, tb =
    rows[i], rows[i+1], rows[i+2], rows[i+3], rows[i+4], rows[i+5], rows[i+6],
    rows[i+7], rows[i+8], rows[i+9]
  local old = redis.call('HGET', p .. ':info', id)
  local was = nil
  if old then
    local o = cjson.decode(old)
    was = o[1]
    redis.call('ZREM', p .. ':status:' .. o[1], id)
    redis.call('ZREM', p .. ':func:' .. o[2], id)
    redis.call('ZREM', p .. ':queue:' .. o[3], id)
    count(stats, o[1], o[3], o[4], o[5], -1)
  end
  count(stats, status, queue, hb, dur, 1)
  if tb ~= '' and not (was and finished[was]) then
    local tk = p .. ':tput'
    -- A bucket's first count may also drop buckets too old to be read (bounded hash).
    if redis.call('HINCRBY', tk, tb .. '|' .. status, 1) == 1
       and redis.call('HLEN', tk) > 4 * POINTS then
      local oldest = tonumber(tb) - POINTS
      for _, f in ipairs(redis.call('HKEYS', tk)) do
        local b = tonumber(string.match(f, '^(%-?%d+)|'))
        if b and b < oldest then redis.call('HDEL', tk, f) end
      end
    end
  end
  redis.call('HSET', p .. ':info', id, cjson.encode({status, func, queue, hb, dur}))
  redis.call('ZADD', p .. ':idx', created, id)
  redis.call('ZADD', p .. ':status:' .. status, created, id)
  redis.call('ZADD', p .. ':func:' .. func, created, id)
  redis.call('ZADD', p .. ':queue:' .. queue, created, id)
  if ended == '' then
    redis.call('ZREM', p .. ':ended', id)
  else
    redis.call('ZADD', p .. ':ended', ended, id)
  end
  if ttl > 0 then
    redis.call('SET', p .. ':rec:' .. id, data, 'PX', ttl)
  else
    redis.call('SET', p .. ':rec:' .. id, data)
  end
  ids[#ids + 1] = id
end
redis.call('XADD', p .. ':changes', 'MAXLEN', '~', ARGV[5], '*', 'o', origin,
           'i', cjson.encode(ids))
return 0
""".replace("POINTS", str(THROUGHPUT_POINTS))
)

# ARGV: prefix, mode, the finished statuses as a JSON list, then task ids. Mode 'all' deletes
# each; 'missing' only drops index entries whose record expired; 'finished' deletes only
# records in a finished status. Returns how many record keys were deleted.
_REMOVE = (
    _COUNT
    + """
local p, mode = ARGV[1], ARGV[2]
local finished = {}
for _, s in ipairs(cjson.decode(ARGV[3])) do finished[s] = true end
local removed = 0
for i = 4, #ARGV do
  local id = ARGV[i]
  local rec = p .. ':rec:' .. id
  local info = redis.call('HGET', p .. ':info', id)
  local o = info and cjson.decode(info)
  local go = mode == 'all'
    or (mode == 'missing' and redis.call('EXISTS', rec) == 0)
    or (mode == 'finished' and o and finished[o[1]])
  if go then
    if o then
      redis.call('ZREM', p .. ':status:' .. o[1], id)
      redis.call('ZREM', p .. ':func:' .. o[2], id)
      redis.call('ZREM', p .. ':queue:' .. o[3], id)
      redis.call('HDEL', p .. ':info', id)
      count(p .. ':stats', o[1], o[3], o[4], o[5], -1)
    end
    redis.call('ZREM', p .. ':idx', id)
    redis.call('ZREM', p .. ':ended', id)
    removed = removed + redis.call('DEL', rec)
  end
end
return removed
"""
)

# KEYS: the index zset. ARGV: record key prefix, max score (with '(' when exclusive),
# tie member ('' for none: ties at max are taken whole), min score, count.
# Returns id, score, data triplets strictly after (max, tie member), newest first, as one JSON
# array (one string for the client to parse; data is false for a record that expired).
_PAGE = """
local key, recp, maxs, after, mins, count =
  KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local ids, scores = {}, {}
if after ~= '' then
  local ties = redis.call('ZRANGE', key, maxs, maxs, 'BYSCORE')
  for i = #ties, 1, -1 do
    if #ids >= count then break end
    if ties[i] < after then
      ids[#ids + 1] = ties[i]
      scores[#scores + 1] = maxs
    end
  end
  maxs = '(' .. maxs
end
if #ids < count then
  local rest = redis.call('ZRANGE', key, maxs, mins, 'BYSCORE', 'REV', 'LIMIT', 0,
                          count - #ids, 'WITHSCORES')
  for i = 1, #rest, 2 do
    ids[#ids + 1] = rest[i]
    scores[#scores + 1] = rest[i + 1]
  end
end
local out = {}
for i, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = scores[i]
  out[#out + 1] = redis.call('GET', recp .. id)
end
if #out == 0 then return '[]' end
return cjson.encode(out)
"""

# KEYS: journal, journal owners. ARGV: claimer, limit, lease key prefix.
_CLAIM = """
local out, alive, limit = {}, {}, tonumber(ARGV[2])
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  if #out >= 2 * limit then break end
  local owner = redis.call('HGET', KEYS[2], id)
  local free = not owner
  if owner then
    if alive[owner] == nil then
      alive[owner] = redis.call('EXISTS', ARGV[3] .. owner) == 1
    end
    free = not alive[owner]
  end
  if free then
    redis.call('HSET', KEYS[2], id, ARGV[1])
    out[#out + 1] = id
    out[#out + 1] = redis.call('HGET', KEYS[1], id)
  end
end
return out
"""

# KEYS: journal owners. ARGV: owner.
_RELEASE = """
local all, n = redis.call('HGETALL', KEYS[1]), 0
for i = 1, #all, 2 do
  if all[i + 1] == ARGV[1] then
    redis.call('HDEL', KEYS[1], all[i])
    n = n + 1
  end
end
return n
"""

# KEYS: the key. ARGV: holder, ttl_ms (0: none). Like SET NX PX, but the same holder may
# renew. Returns nil when taken, else the other holder.
_RESERVE = """
local held = redis.call('GET', KEYS[1])
if held and held ~= ARGV[1] then return held end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
return false
"""

# KEYS: journal. ARGV: task_id, data, task_id, data... Replaces only fields that exist.
_UPDATE_EXISTING = """
local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    n = n + 1
  end
end
return n
"""

# KEYS: a hash. Its fields and values as one JSON array: one string for the client to parse
# instead of two per field (redis-py's own reply parser costs ~20 us a string).
_HASH_JSON = """
local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then return '[]' end
return cjson.encode(flat)
"""

# KEYS: the limit's key. ARGV: interval, burst (see ratelimit.gcra_step). The server's clock
# serves every instance. Returns "0" when the start is taken, else the seconds to wait. The
# key expires once its arrival time has passed: a missing key means "now".
_RATE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local allowed_at = tat - (burst - 1) * interval
if now < allowed_at then return string.format('%.6f', allowed_at - now) end
local new = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', new), 'PX', math.ceil((new - now) * 1000) + 1000)
return '0'
"""

# KEYS: the key. ARGV: holder. Compare-and-delete.
_COMPARE_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _stream_id(value: str) -> tuple[int, int]:
    milliseconds, _, sequence = value.partition("-")
    return int(milliseconds), int(sequence or 0)


# KEYS: runs hash, due zset. ARGV: run_key, run_at, data. Insert unless the key exists.
_PUT_ONCE = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[3]) == 0 then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: runs hash, due zset. ARGV: run_key. Delete and return {run_at, data}, or nil.
_TAKE_ONCE = """
local data = redis.call('HGET', KEYS[1], ARGV[1])
if not data then return false end
local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return {at or '0', data}
"""

# KEYS: counter. ARGV: amount, ttl ms. An expired key is gone, so INCRBY starts from 0.
_COUNTER_ADD = """
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return value
"""

# KEYS: counter. Returns {value or false, ms left}, read together.
_COUNTER_GET = """
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1])}
"""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _doc_matches(data: str, query: RecordQuery) -> bool:
    """Filters the chosen index cannot answer, checked on the record's JSON.

    A row that is not valid JSON passes, so the base class reports it as corrupt.
    """
    try:
        doc = json.loads(data)
        fields = (
            (query.status, doc.get("status")),
            (query.func_name, doc.get("func_name")),
            (query.queue, doc.get("queue")),
        )
        if any(want is not None and want != got for want, got in fields):
            return False
        if query.tag is not None and (doc.get("tags") or {}).get(query.tag[0]) != query.tag[1]:
            return False
        if query.text:
            hay = f"{doc.get('func_name')}\n{doc.get('task_id')}\n{doc.get('error') or ''}"
            return query.text.lower() in hay.lower()
    except (AttributeError, TypeError, ValueError):
        return True
    return True


class RedisBackend(TaskBackend):
    """History, journal, leases, idempotency keys and locks in Redis, shared across machines."""

    shared = True
    system_of_record = True

    def __init__(
        self,
        url: str = "redis://localhost:6379/0",
        *,
        prefix: str = "taskflow",
        record_ttl: float | None = None,
        socket_timeout: float = 5.0,
        ttl: float | None = None,
        **client_options: Any,
    ) -> None:
        """``client_options`` go to ``redis.asyncio.Redis.from_url`` (``ssl_cert_reqs``...)."""
        super().__init__()
        if ttl is not None:
            record_ttl = renamed_keyword("RedisBackend", "ttl", "record_ttl", ttl, record_ttl)
        self.client_options = client_options
        self.url = url
        self.prefix = prefix
        self.record_ttl = record_ttl
        self.socket_timeout = socket_timeout
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    def describe(self) -> str:
        return mask_url(self.url)

    def key(self, *parts: str) -> str:
        """The full name of one of this backend's keys (see the module docstring)."""
        return ":".join((self.prefix, *parts))

    # ---- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        client = aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            **self.client_options,
        )
        try:
            await cast(Awaitable[Any], client.ping())
        except (RedisError, OSError) as exc:
            await client.aclose()
            raise BackendError(f"Redis at {self.describe()} does not answer: {exc}") from None
        self._scripts = {
            name: client.register_script(source)
            for name, source in (
                ("save", _SAVE),
                ("remove", _REMOVE),
                ("page", _PAGE),
                ("claim", _CLAIM),
                ("release", _RELEASE),
                ("reserve", _RESERVE),
                ("compare_delete", _COMPARE_DELETE),
                ("update_existing", _UPDATE_EXISTING),
                ("hash_json", _HASH_JSON),
                ("put_once", _PUT_ONCE),
                ("take_once", _TAKE_ONCE),
                ("counter_add", _COUNTER_ADD),
                ("counter_get", _COUNTER_GET),
                ("rate", _RATE),
            )
        }
        self._client = client
        await self._count_existing()

    async def _count_existing(self) -> None:
        """Records written before this version kept no stats: count them once (the first
        instance to get here does it; durations of those rows are not known)."""
        async with self._errors() as client:
            if not await self._call(client.set(self.key("stats", "ready"), "1", nx=True)):
                return
            deltas: dict[str, float] = {}
            async for _, info in client.hscan_iter(self.key("info")):
                status, _, queue = json.loads(info)[:3]
                add_delta(deltas, None, (status, queue, None))
            if deltas:
                pipe = client.pipeline(transaction=True)
                for key, value in deltas.items():
                    pipe.hincrbyfloat(self.key("stats"), key, value)
                await pipe.execute()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # ---- plumbing --------------------------------------------------------------------------

    def _redis(self) -> aioredis.Redis:
        if self._client is None:
            raise BackendError(f"{self.describe()} is not open; call open() first")
        return self._client

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[aioredis.Redis]:
        client = self._redis()
        try:
            yield client
        except RedisError as exc:
            raise BackendError(f"{self.describe()}: {exc}") from exc

    async def _call(self, command: Awaitable[Any] | Any) -> Any:
        """Await one client command (redis-py types them as ``Awaitable | Any``)."""
        return await cast(Awaitable[Any], command)

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        async with self._errors() as client:
            return await self._scripts[name](keys=keys, args=args, client=client)

    # ---- records ---------------------------------------------------------------------------

    async def _write_rows(self, rows: list[Row], origin: str = "") -> None:
        ttl = _ms(self.record_ttl) if self.record_ttl else 0
        for start in range(0, len(rows), _BATCH):
            flat: list[str] = []
            for row in rows[start : start + _BATCH]:
                end = row["end_time"]
                duration = row.get("duration")
                # The script decides with the old status whether this write counts as throughput.
                bucket = throughput_key(None, row["status"], end)
                flat += [
                    row["task_id"],
                    repr(float(row["created_at"])),
                    row["status"],
                    row["func_name"],
                    row["queue"],
                    "" if end is None else repr(float(end)),
                    row["data"],
                    "" if duration is None else repr(float(duration)),
                    "" if duration is None else str(histogram_bucket(duration)),
                    "" if bucket is None else str(bucket),
                ]
            args = [self.prefix, ttl, origin, _FINISHED_JSON, CHANGES_KEPT, compact_json(flat)]
            await self._script("save", [], args)

    async def _read_rows(self, task_ids: list[str]) -> list[tuple[str, str | bytes]]:
        async with self._errors() as client:
            datas = await self._call(client.mget([self.key("rec", t) for t in task_ids]))
        return [(t, d) for t, d in zip(task_ids, datas, strict=True) if d is not None]

    async def _hash(self, key: str) -> dict[str, str]:
        flat = json.loads(await self._script("hash_json", [key], []))
        return {str(flat[i]): str(flat[i + 1]) for i in range(0, len(flat), 2)}

    async def _read_stats(self) -> dict[str, float]:
        return {key: float(value) for key, value in (await self._hash(self.key("stats"))).items()}

    async def _read_throughput(self, first_bucket: int) -> list[tuple[int, int, int]]:
        buckets: dict[int, list[int]] = {}
        for name, count in (await self._hash(self.key("tput"))).items():
            bucket, _, status = name.partition("|")
            if int(bucket) >= first_bucket:
                slot = buckets.setdefault(int(bucket), [0, 0])
                slot[0 if status == "success" else 1] += int(count)
        return [(b, s, f) for b, (s, f) in sorted(buckets.items())]

    async def _changes_after(
        self, cursor: str | None, limit: int
    ) -> tuple[list[tuple[str, list[str]]], str, bool]:
        stream = self.key("changes")
        async with self._errors() as client:
            if cursor is None:
                newest = await self._call(client.xrevrange(stream, count=1))
                return [], newest[0][0] if newest else "0-0", False
            pipe = client.pipeline(transaction=True)
            pipe.xrange(stream, min="(" + cursor, count=limit)
            pipe.xinfo_stream(stream)
            try:
                found, info = await pipe.execute()
            except RedisError:
                if await self._call(client.exists(stream)):
                    raise
                return [], cursor, False  # no stream yet: nothing was written
        entries = [(fields.get("o", ""), list(json.loads(fields["i"]))) for _, fields in found]
        # Entries trimmed away that this reader had not read yet.
        trimmed = info.get("max-deleted-entry-id") or "0-0"
        gap = _stream_id(trimmed) > _stream_id(cursor)
        return entries, found[-1][0] if found else cursor, gap

    async def _read_row(self, task_id: str) -> str | bytes | None:
        async with self._errors() as client:
            return cast(str | None, await self._call(client.get(self.key("rec", task_id))))

    def _index_for(self, query: RecordQuery) -> str:
        # One sorted set answers the most selective equality filter; the rest are checked on
        # the JSON while scanning.
        if query.status is not None:
            return self.key("status", query.status)
        if query.func_name is not None:
            return self.key("func", query.func_name)
        if query.queue is not None:
            return self.key("queue", query.queue)
        return self.key("idx")

    @staticmethod
    def _needs_doc(query: RecordQuery) -> bool:
        equalities = [query.status, query.func_name, query.queue]
        return bool(query.tag or query.text or sum(v is not None for v in equalities) > 1)

    @staticmethod
    def _start(query: RecordQuery, after: tuple[float, str] | None) -> tuple[str, str]:
        """The page's upper bound as (max score, tie member) for the PAGE script."""
        until = query.until.timestamp() if query.until is not None else None
        if after is not None and (until is None or after[0] < until):
            return repr(after[0]), after[1]
        return ("(" + repr(until) if until is not None else "+inf"), ""

    async def _query_rows(
        self, query: RecordQuery, after: tuple[float, str] | None, limit: int
    ) -> list[tuple[str, str | bytes]]:
        index = self._index_for(query)
        lowest = repr(query.since.timestamp()) if query.since is not None else "-inf"
        needs_doc = self._needs_doc(query)
        batch = max(limit * 2, 200) if needs_doc else limit
        top, tie = self._start(query, after)
        out: list[tuple[str, str | bytes]] = []
        expired: list[str] = []
        while len(out) < limit:
            found = json.loads(
                await self._script("page", [index], [self.key("rec", ""), top, tie, lowest, batch])
            )
            for i in range(0, len(found), 3):
                task_id, data = found[i], found[i + 2]
                if not isinstance(data, str):
                    expired.append(task_id)
                elif (not needs_doc or _doc_matches(data, query)) and len(out) < limit:
                    out.append((task_id, data))
            position = (repr(float(found[-2])), found[-3]) if found else (top, tie)
            # A short batch is the end; a position that does not move would loop forever.
            if len(found) < 3 * batch or position == (top, tie):
                break
            top, tie = position
        if expired:
            await self._remove(expired, "missing")
        return out

    async def _remove(self, task_ids: list[str], mode: str) -> int:
        removed = 0
        for start in range(0, len(task_ids), _BATCH):
            chunk = task_ids[start : start + _BATCH]
            args = [self.prefix, mode, json.dumps(_FINISHED), *chunk]
            removed += int(await self._script("remove", [], args))
        return removed

    async def _prune_expired(self) -> None:
        """Drop index entries of records that ``record_ttl`` expired (only old ones can be)."""
        if not self.record_ttl:
            return
        horizon = "(" + repr(time.time() - self.record_ttl)
        async with self._errors() as client:
            ids = await self._call(client.zrangebyscore(self.key("idx"), "-inf", horizon))
        await self._remove(list(ids), "missing")

    async def _delete_rows_before(self, cutoff: float) -> int:
        await self._prune_expired()
        async with self._errors() as client:
            ids = await self._call(
                client.zrangebyscore(self.key("ended"), "-inf", "(" + repr(cutoff))
            )
        return await self._remove(list(ids), "finished")

    async def _delete_rows(self, task_ids: list[str]) -> int:
        return await self._remove(task_ids, "all")

    async def _count_rows(self) -> dict[str, int]:
        await self._prune_expired()
        statuses = [s.value for s in TaskStatus]
        async with self._errors() as client:
            pipe = client.pipeline(transaction=False)
            for status in statuses:
                pipe.zcard(self.key("status", status))
            counts = await pipe.execute()
        return {s: int(n) for s, n in zip(statuses, counts, strict=True) if n}

    # ---- journal and leases ------------------------------------------------------------------

    async def _journal_write(self, items: list[tuple[str, str]], owner: str) -> None:
        async with self._errors() as client:
            pipe = client.pipeline(transaction=True)
            pipe.hset(self.key("journal"), mapping=dict(items))
            pipe.hset(self.key("journal", "owner"), mapping={tid: owner for tid, _ in items})
            await pipe.execute()

    async def _journal_delete(self, task_ids: list[str]) -> None:
        async with self._errors() as client:
            pipe = client.pipeline(transaction=True)
            pipe.hdel(self.key("journal"), *task_ids)
            pipe.hdel(self.key("journal", "owner"), *task_ids)
            await pipe.execute()

    async def _journal_release(self, owner: str) -> int:
        return int(await self._script("release", [self.key("journal", "owner")], [owner]))

    async def _journal_claim(self, owner: str, limit: int) -> list[tuple[str, str]]:
        keys = [self.key("journal"), self.key("journal", "owner")]
        found = await self._script("claim", keys, [owner, limit, self.key("owner", "")])
        return [(found[i], found[i + 1]) for i in range(0, len(found), 2)]

    async def _journal_list(self, owner: str) -> list[tuple[str, str]]:
        async with self._errors() as client:
            owners = await self._call(client.hgetall(self.key("journal", "owner")))
            mine = [tid for tid, holder in owners.items() if holder == owner]
            if not mine:
                return []
            datas = await self._call(client.hmget(self.key("journal"), mine))
        return [(tid, data) for tid, data in zip(mine, datas, strict=True) if data is not None]

    async def _journal_page(
        self, after: str | None, limit: int
    ) -> list[tuple[str, str | None, str]]:
        # Journals hold unfinished tasks only, so listing the ids and sorting them is cheap.
        async with self._errors() as client:
            ids = await self._call(client.hkeys(self.key("journal")))
            page = sorted(t for t in ids if after is None or t > after)[:limit]
            if not page:
                return []
            datas = await self._call(client.hmget(self.key("journal"), page))
            owners = await self._call(client.hmget(self.key("journal", "owner"), page))
        return [
            (tid, owner, data)
            for tid, owner, data in zip(page, owners, datas, strict=True)
            if data is not None
        ]

    async def _journal_update(self, items: list[tuple[str, str]]) -> int:
        args = [value for item in items for value in item]
        return int(await self._script("update_existing", [self.key("journal")], args))

    async def _update_rows(self, items: list[tuple[str, str]]) -> int:
        async with self._errors() as client:
            pipe = client.pipeline(transaction=False)
            for task_id, data in items:
                pipe.set(self.key("rec", task_id), data, xx=True, keepttl=True)
            done = await pipe.execute()
        return sum(1 for ok in done if ok)

    async def _heartbeat(self, owner: str, ttl: float) -> None:
        async with self._errors() as client:
            await self._call(client.set(self.key("owner", owner), "1", px=_ms(ttl)))

    async def _drop_owner(self, owner: str) -> None:
        async with self._errors() as client:
            await self._call(client.delete(self.key("owner", owner)))

    # ---- idempotency, locks, metadata --------------------------------------------------------

    async def _reserve_key(self, key: str, task_id: str, ttl: float | None) -> str | None:
        ttl_ms = _ms(ttl) if ttl is not None else 0
        held = await self._script("reserve", [self.key("key", key)], [task_id, ttl_ms])
        return cast(str | None, held)

    async def _release_key(self, key: str, task_id: str) -> None:
        await self._script("compare_delete", [self.key("key", key)], [task_id])

    async def _acquire_lock(self, name: str, owner: str, ttl: float) -> bool:
        held = await self._script("reserve", [self.key("lock", name)], [owner, _ms(ttl)])
        return held is None

    async def _get_meta(self, key: str) -> str | None:
        async with self._errors() as client:
            return cast(str | None, await self._call(client.hget(self.key("meta"), key)))

    async def _set_meta(self, key: str, value: str) -> None:
        async with self._errors() as client:
            await self._call(client.hset(self.key("meta"), key, value))

    # ---- fastapi-taskflow 0.12's keys ----------------------------------------------------------

    def _legacy_prefixes(self) -> list[str]:
        """Where 0.12 kept its keys: this backend's prefix (0.12 took the same ``prefix=``)
        and 0.12's default."""
        return list(dict.fromkeys([self.prefix, LEGACY_PREFIX]))

    async def _legacy_page(self, table: str, after: str | None, limit: int) -> list[Row]:
        infix = _LEGACY_INFIX[table]
        async with self._errors() as client:
            found: dict[str, str] = {}
            for prefix in self._legacy_prefixes():
                index = f"{prefix}{infix}:_index"
                ids = await self._call(
                    client.zrange(index, 0, -1)
                    if table == "task_scheduled_once"
                    else client.smembers(index)
                )
                found.update({tid: prefix for tid in ids if tid not in found})
            page = sorted(t for t in found if after is None or t > after)[:limit]
            pipe = client.pipeline(transaction=False)
            for task_id in page:
                pipe.hgetall(f"{found[task_id]}{infix}:{task_id}")
            hashes = await pipe.execute() if page else []
        return [dict(h) for h in hashes if h]

    async def _legacy_delete(self, table: str, task_ids: list[str]) -> None:
        infix = _LEGACY_INFIX[table]
        async with self._errors() as client:
            pipe = client.pipeline(transaction=True)
            for prefix in self._legacy_prefixes():
                index = f"{prefix}{infix}:_index"
                if table == "task_scheduled_once":
                    pipe.zrem(index, *task_ids)
                else:
                    pipe.srem(index, *task_ids)
                pipe.delete(*(f"{prefix}{infix}:{task_id}" for task_id in task_ids))
            await pipe.execute()

    # ---- instances, commands, one-off schedules ------------------------------------------------

    # XREAD BLOCK waits for the next command itself: no pause between reads.
    command_poll_interval = 0.0

    async def _put_instance(self, instance_id: str, data: str, ttl: float) -> None:
        async with self._errors() as client:
            pipe = client.pipeline(transaction=True)
            pipe.sadd(self.key("instances"), instance_id)
            pipe.set(self.key("instance", instance_id), data, px=_ms(ttl))
            await pipe.execute()

    async def _list_instances(self) -> list[tuple[str, str]]:
        async with self._errors() as client:
            ids = sorted(await self._call(client.smembers(self.key("instances"))))
            if not ids:
                return []
            datas = await self._call(client.mget([self.key("instance", i) for i in ids]))
            gone = [i for i, data in zip(ids, datas, strict=True) if data is None]
            if gone:  # their announcement expired: a dead instance
                await self._call(client.srem(self.key("instances"), *gone))
        return [(i, data) for i, data in zip(ids, datas, strict=True) if data is not None]

    async def _remove_instance(self, instance_id: str) -> None:
        async with self._errors() as client:
            pipe = client.pipeline(transaction=True)
            pipe.srem(self.key("instances"), instance_id)
            pipe.delete(self.key("instance", instance_id))
            await pipe.execute()

    async def _send_command(self, data: str) -> None:
        horizon = f"{int((time.time() - COMMAND_TTL) * 1000)}-0"
        async with self._errors() as client:
            await self._call(
                client.xadd(self.key("commands"), {"d": data}, minid=horizon, approximate=False)
            )

    async def _command_position(self) -> str:
        async with self._errors() as client:
            newest = await self._call(client.xrevrange(self.key("commands"), count=1))
        return str(newest[0][0]) if newest else "0-0"

    async def _read_commands(self, after: str, wait: float) -> list[tuple[str, str]]:
        # Never block as long as the socket timeout: the read would fail as a dead server.
        block = int(min(wait, self.socket_timeout / 2) * 1000)
        async with self._errors() as client:
            found = await self._call(
                client.xread({self.key("commands"): after}, count=500, block=block or None)
            )
        if not found:
            return []
        return [(str(position), fields["d"]) for position, fields in found[0][1]]

    async def _put_schedule(self, run_key: str, run_at: float, data: str) -> bool:
        keys = [self.key("once"), self.key("once", "at")]
        return bool(await self._script("put_once", keys, [run_key, repr(run_at), data]))

    async def _take_schedule(self, run_key: str) -> tuple[float, str] | None:
        keys = [self.key("once"), self.key("once", "at")]
        taken = await self._script("take_once", keys, [run_key])
        return (float(taken[0]), taken[1]) if taken else None

    async def _list_schedules(self, before: float | None) -> list[tuple[str, float, str]]:
        top = "(" + repr(before) if before is not None else "+inf"
        async with self._errors() as client:
            due = await self._call(
                client.zrangebyscore(self.key("once", "at"), "-inf", top, withscores=True)
            )
            if not due:
                return []
            datas = await self._call(client.hmget(self.key("once"), [k for k, _ in due]))
        rows = [(key, float(at), data) for (key, at), data in zip(due, datas, strict=True) if data]
        return sorted(rows, key=lambda row: (row[1], row[0]))

    async def _counter_add(self, key: str, amount: int, ttl: float) -> int:
        return int(
            await self._script("counter_add", [self.key("counter", key)], [amount, _ms(ttl)])
        )

    async def _counter_get(self, key: str) -> tuple[int, float]:
        value, left = await self._script("counter_get", [self.key("counter", key)], [])
        if value is None or int(left) <= 0:
            return 0, 0.0
        return int(value), int(left) / 1000

    async def _counter_delete(self, key: str) -> None:
        async with self._errors() as client:
            await self._call(client.delete(self.key("counter", key)))

    async def _append_audit(self, data: str, keep: int) -> None:
        # MULTI/EXEC: no other client's push runs between this push and its trim.
        async with self._errors() as client:
            pipe = client.pipeline(transaction=True)
            pipe.lpush(self.key("audit"), data)
            pipe.ltrim(self.key("audit"), 0, keep - 1)
            await pipe.execute()

    async def _read_audit(self, limit: int) -> Sequence[str | bytes]:
        if limit <= 0:
            return []
        async with self._errors() as client:
            found = await self._call(client.lrange(self.key("audit"), 0, limit - 1))
        return [str(data) for data in found]

    async def _take_rate_token(self, key: str, interval: float, burst: int) -> float:
        wait = await self._script("rate", [self.key("rate", key)], [repr(interval), burst])
        return float(wait)
