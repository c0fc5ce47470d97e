"""Limits store in Redis for several replicas: each reservation is one Lua script (one EVALSHA).

The script checks every counter and slot set and takes them all or none, so there is no
check-then-set race between replicas. Counters carry TTLs to the end of their window; slot sets
are sorted by expiry. All keys share one hash tag (the namespace) so the scripts are valid on a
Redis Cluster too (on one shard).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from vapi_proxy.limits.config import LimitsSettings
from vapi_proxy.limits.core import Plan, Shortfall
from vapi_proxy.limits.deadline import unavailable_on

_RESERVE = """
local now = ARGV[1]
local nc = tonumber(ARGV[2])
local nsl = tonumber(ARGV[3])
local short = {}
local a = 4
-- A sliding rate window's earlier buckets follow the reservation's own keys in KEYS.
local w = nc + nsl + 3
for i = 1, nc do
  local amount = tonumber(ARGV[a])
  local limit = tonumber(ARGV[a + 1])
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  for _ = 1, tonumber(ARGV[a + 4]) do
    cur = cur + tonumber(redis.call('GET', KEYS[w]) or '0')
    w = w + 1
  end
  local ok
  if ARGV[a + 2] == '1' then ok = cur + amount <= limit else ok = cur < limit end
  if not ok then
    short[#short + 1] = i - 1; short[#short + 1] = cur; short[#short + 1] = ''
  end
  a = a + 5
end
for j = 1, nsl do
  local k = KEYS[nc + j]
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local n = redis.call('ZCARD', k)
  if n >= tonumber(ARGV[a]) then
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    short[#short + 1] = nc + j - 1; short[#short + 1] = n; short[#short + 1] = first[2] or ''
  end
  a = a + 2
end
if #short > 0 then return short end
a = 4
for i = 1, nc do
  -- INCRBY 0 too: settle must find the counter to add the actual cost to.
  redis.call('INCRBY', KEYS[i], ARGV[a])
  redis.call('PEXPIRE', KEYS[i], ARGV[a + 3])
  a = a + 5
end
local rid = ARGV[a + 2 * nsl]
local expires_at = ARGV[a + 2 * nsl + 1]
local keep_ms = tonumber(ARGV[a + 2 * nsl + 2])
for j = 1, nsl do
  local k = KEYS[nc + j]
  redis.call('ZADD', k, expires_at, rid)
  local want = tonumber(ARGV[a + 1])
  if redis.call('PTTL', k) < want then redis.call('PEXPIRE', k, want) end
  a = a + 2
end
local rk = KEYS[nc + nsl + 1]
redis.call('HSET', rk, 'state', 'pending', 'holds', ARGV[#ARGV], 'expires_at', expires_at)
redis.call('PEXPIRE', rk, keep_ms)
redis.call('ZADD', KEYS[nc + nsl + 2], expires_at, rid)
return {}
"""

_COMMIT = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'committed', 'call', ARGV[2])
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl) end
return 1
"""

# ARGV: rid, mode (release|settle), actual ms or '', actual micro-USD or ''.
# Settle mirrors core.true_up: each actual lands at most once ('applied' remembers m/u), and a
# reservation still waiting for one is left 'ended' (slot freed) rather than 'settled'.
_FINISH = """
local st = redis.call('HGET', KEYS[1], 'state')
if not st then return 0 end
local release = ARGV[2] == 'release'
local live = st == 'pending' or st == 'committed'
if release and not live then return 0 end
if not release and not (live or st == 'expired' or st == 'ended') then return 0 end
local applied = redis.call('HGET', KEYS[1], 'applied') or ''
local given = {minutes = ARGV[3], usd = ARGV[4]}
local needed_done = true
for _, h in ipairs(cjson.decode(redis.call('HGET', KEYS[1], 'holds'))) do
  local what, key, amount = h[1], h[2], tonumber(h[3])
  if what == 'concurrency' then
    redis.call('ZREM', key, ARGV[1])
  else
    local delta = nil
    local tag = string.sub(what, 1, 1)
    if release then
      delta = -amount
    elseif given[what] ~= nil then
      if given[what] ~= '' then
        if not string.find(applied, tag, 1, true) then delta = tonumber(given[what]) - amount end
      elseif not string.find(applied, tag, 1, true) then
        needed_done = false
      end
    end
    -- A counter gone with its window stays gone: the window is over.
    if delta and delta ~= 0 and redis.call('EXISTS', key) == 1 then
      if redis.call('INCRBY', key, delta) < 0 then redis.call('SET', key, 0, 'KEEPTTL') end
    end
  end
end
if release then
  st = 'released'
else
  if ARGV[3] ~= '' and not string.find(applied, 'm', 1, true) then applied = applied .. 'm' end
  if ARGV[4] ~= '' and not string.find(applied, 'u', 1, true) then applied = applied .. 'u' end
  if needed_done then st = 'settled' else st = 'ended' end
end
redis.call('HSET', KEYS[1], 'state', st, 'applied', applied)
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

# KEYS: live set; ARGV: now, reservation key prefix. Returns the freed calls' ids ('' if none).
_EXPIRE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 500)
local freed = {}
for _, rid in ipairs(ids) do
  local rk = ARGV[2] .. rid
  local st = redis.call('HGET', rk, 'state')
  if st == 'pending' or st == 'committed' then
    for _, h in ipairs(cjson.decode(redis.call('HGET', rk, 'holds'))) do
      if h[1] == 'concurrency' then redis.call('ZREM', h[2], rid) end
    end
    redis.call('HSET', rk, 'state', 'expired')
    freed[#freed + 1] = redis.call('HGET', rk, 'call') or ''
  end
  redis.call('ZREM', KEYS[1], rid)
end
return freed
"""


_unavailable = unavailable_on(RedisConnectionError, RedisTimeoutError)


_POOL_CONNECTIONS = 64


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    def __init__(self, settings: LimitsSettings) -> None:
        t = settings.timeout_seconds
        # A blocking pool queues a burst for a free connection instead of failing it (the
        # default pool raises MaxConnectionsError, which would read as "Redis is down").
        self._pool = aioredis.BlockingConnectionPool.from_url(
            settings.backend,
            max_connections=_POOL_CONNECTIONS,
            # `slots` already queues a burst (outside the deadline): a connection is free here.
            timeout=max(30.0, t),
            decode_responses=True,
            socket_timeout=t,
            socket_connect_timeout=t,
            # One immediate retry covers a pooled connection that died with a Redis restart;
            # more would only delay the fail-closed/fail-open answer.
            retry=Retry(NoBackoff(), 1),
        )
        self._redis: aioredis.Redis = aioredis.Redis(connection_pool=self._pool)
        host = self._redis.connection_pool.connection_kwargs.get("host", "?")
        port = self._redis.connection_pool.connection_kwargs.get("port", "?")
        self.name = f"redis ({host}:{port})"
        self._ns = settings.namespace
        # The deadline starts once a connection is ours (see `_unavailable`).
        self.deadline: float | None = t
        self.slots = asyncio.Semaphore(_POOL_CONNECTIONS)
        self.queue_timeout = max(30.0, t)
        self.deadline_misses = 0
        self._tag = f"{{{settings.namespace}}}"
        self._reserve = self._redis.register_script(_RESERVE)
        self._commit = self._redis.register_script(_COMMIT)
        self._finish = self._redis.register_script(_FINISH)
        self._expire = self._redis.register_script(_EXPIRE)

    def _k(self, key: str) -> str:
        """Plan keys start with the namespace; wrap it in braces to make it the hash tag."""
        return self._tag + key[len(self._ns) :] if key.startswith(self._ns) else key

    def _res(self, rid: str) -> str:
        return f"{self._tag}:res:{rid}"

    @property
    def _live(self) -> str:
        return f"{self._tag}:live"

    @_unavailable
    async def reserve(
        self, rid: str, plan: Plan, *, now: float, expires_at: float, keep_until: float
    ) -> list[Shortfall]:
        keys = [self._k(c.hold.key) for c in plan.counters]
        keys += [self._k(s.hold.key) for s in plan.slots]
        keys += [self._res(rid), self._live]
        keys += [self._k(k) for c in plan.counters for k in c.window]
        args: list[Any] = [repr(now), len(plan.counters), len(plan.slots)]
        for c in plan.counters:
            args += [c.hold.amount, c.limit, "1" if c.fit else "0", _ms(c.ttl), len(c.window)]
        for s in plan.slots:
            args += [s.limit, _ms(keep_until - now)]
        holds = [[h.what, self._k(h.key), h.amount] for h in plan.holds]
        args += [rid, repr(expires_at), _ms(keep_until - now), json.dumps(holds)]
        out = await self._reserve(keys=keys, args=args)
        short: list[Shortfall] = []
        for i in range(0, len(out), 3):
            earliest = float(out[i + 2]) if out[i + 2] not in ("", None) else None
            short.append(Shortfall(int(out[i]), int(out[i + 1]), earliest))
        return short

    @_unavailable
    async def commit(self, rid: str, call_id: str, *, now: float) -> None:
        keys = [self._res(rid), f"{self._tag}:call:{call_id}"]
        await self._commit(keys=keys, args=[rid, call_id])

    @_unavailable
    async def release(self, rid: str, *, now: float) -> None:
        keys = [self._res(rid), self._live]
        await self._finish(keys=keys, args=[rid, "release", "", ""])

    @_unavailable
    async def settle(
        self, call_id: str, *, actual_ms: int | None, actual_micro_usd: int | None, now: float
    ) -> None:
        raw = await self._redis.get(f"{self._tag}:call:{call_id}")
        if raw is None:
            return
        rid = raw if isinstance(raw, str) else raw.decode()
        args = [
            rid,
            "settle",
            "" if actual_ms is None else actual_ms,
            "" if actual_micro_usd is None else actual_micro_usd,
        ]
        await self._finish(keys=[self._res(rid), self._live], args=args)

    @_unavailable
    async def expire(self, now: float) -> list[str | None]:
        freed = await self._expire(keys=[self._live], args=[repr(now), f"{self._tag}:res:"])
        return [str(c) if c else None for c in freed]

    @_unavailable
    async def peek(
        self, keys: Sequence[str], slot_keys: Sequence[str], *, now: float
    ) -> tuple[dict[str, int], dict[str, tuple[int, float | None]]]:
        pipe = self._redis.pipeline(transaction=False)
        if keys:
            pipe.mget([self._k(k) for k in keys])
        for key in slot_keys:
            pipe.zrangebyscore(self._k(key), f"({now!r}", "+inf", withscores=True)
        out = await pipe.execute()
        values: dict[str, int] = {}
        if keys:
            values = {k: int(v) for k, v in zip(keys, out.pop(0), strict=True) if v is not None}
        live: dict[str, tuple[int, float | None]] = {}
        for key, members in zip(slot_keys, out, strict=True):
            ends = [float(score) for _, score in members]
            live[key] = (len(ends), min(ends, default=None))
        return values, live

    @_unavailable
    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._pool.aclose()
