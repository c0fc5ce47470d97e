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

from vapi_proxy.limits.config import LimitsSettings
from vapi_proxy.limits.core import Plan, Shortfall
from vapi_proxy.limits.deadline import unavailable_on
from vapi_proxy.limits.resp import RespClient, Script

# KEYS: each counter's key, each slot set's key, the reservation's hash, the live set.
# ARGV: now, expires_at (exact text: both are stored), rid, the checks as one JSON array, the
# holds as JSON (stored for settle). One JSON document instead of five arguments per counter
# and one key per earlier bucket: the client encodes each argument in Python, and that was
# most of a reservation's cost on the proxy's side. A rate window's earlier buckets are the
# counter's key with the bucket's number in place of the current one's, all under the same
# hash tag, so they sit on the key's slot (as the holds _FINISH reads do).
_RESERVE = """
local now = ARGV[1]
local expires_at = ARGV[2]
local rid = ARGV[3]
local spec = cjson.decode(ARGV[4])
local counters, slots, keep_ms = spec[1], spec[2], spec[3]
local nc, nsl = #counters, #slots
local short = {}
for i = 1, nc do
  -- amount, limit, must fit (1|0), ttl ms, current bucket's number, earlier buckets counted
  local c = counters[i]
  local cur = tonumber(redis.call('GET', KEYS[i]) or '0')
  local n = c[6]
  if n > 0 then
    local bucket = c[5]
    local own = string.format('%d', bucket)
    local stem = string.sub(KEYS[i], 1, #KEYS[i] - #own)
    for b = bucket - n, bucket - 1 do
      cur = cur + tonumber(redis.call('GET', stem .. string.format('%d', b)) or '0')
    end
  end
  local ok
  if c[3] == 1 then ok = cur + c[1] <= c[2] else ok = cur < c[2] end
  if not ok then
    short[#short + 1] = i - 1; short[#short + 1] = cur; short[#short + 1] = ''
  end
end
for j = 1, nsl do
  local k = KEYS[nc + j]
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  local n = redis.call('ZCARD', k)
  if n >= slots[j][1] then
    local first = redis.call('ZRANGE', k, 0, 0, 'WITHSCORES')
    short[#short + 1] = nc + j - 1; short[#short + 1] = n; short[#short + 1] = first[2] or ''
  end
end
if #short > 0 then return short end
for i = 1, nc do
  -- INCRBY 0 too: settle must find the counter to add the actual cost to.
  redis.call('INCRBY', KEYS[i], string.format('%d', counters[i][1]))
  redis.call('PEXPIRE', KEYS[i], string.format('%d', counters[i][4]))
end
for j = 1, nsl do
  local k = KEYS[nc + j]
  redis.call('ZADD', k, expires_at, rid)
  local want = slots[j][2]
  if redis.call('PTTL', k) < want then redis.call('PEXPIRE', k, string.format('%d', want)) end
end
local rk = KEYS[nc + nsl + 1]
redis.call('HSET', rk, 'state', 'pending', 'holds', ARGV[5], 'expires_at', expires_at)
redis.call('PEXPIRE', rk, string.format('%d', keep_ms))
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


# ConnectionError (a lost connection, a server that cannot answer now) is an OSError.
_unavailable = unavailable_on()


_IN_FLIGHT = 64
"""Commands in flight at once, all on one pipelined connection (see `_unavailable`)."""


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class RedisStore:
    def __init__(self, settings: LimitsSettings) -> None:
        t = settings.timeout_seconds
        self._redis = RespClient(settings.backend, connect_timeout=t)
        self.name = f"redis ({self._redis.target.name})"
        self._ns = settings.namespace
        # The deadline covers connecting too; it starts once the operation holds a slot.
        self.deadline: float | None = t
        self.slots = asyncio.Semaphore(_IN_FLIGHT)
        self.queue_timeout = max(30.0, t)
        self.deadline_misses = 0
        self._tag = f"{{{settings.namespace}}}"
        self._reserve = Script(_RESERVE)
        self._commit = Script(_COMMIT)
        self._finish = Script(_FINISH)
        self._expire = Script(_EXPIRE)

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
        k = self._k
        keys = [k(c.hold.key) for c in plan.counters]
        keys += [k(s.hold.key) for s in plan.slots]
        keys += [self._res(rid), self._live]
        keep_ms = _ms(keep_until - now)
        counters = [
            [c.hold.amount, c.limit, 1 if c.fit else 0, _ms(c.ttl), c.bucket, len(c.window)]
            for c in plan.counters
        ]
        slots = [[s.limit, keep_ms] for s in plan.slots]
        holds = [[h.what, k(h.key), h.amount] for h in plan.holds]
        spec = json.dumps([counters, slots, keep_ms])
        args = [repr(now), repr(expires_at), rid, spec, json.dumps(holds)]
        out = await self._redis.script(self._reserve, keys, args)
        short: list[Shortfall] = []
        for i in range(0, len(out), 3):
            earliest = float(out[i + 2]) if out[i + 2] not in ("", None) else None
            short.append(Shortfall(int(out[i]), int(out[i + 1]), earliest))
        return short

    @_unavailable
    async def commit(self, rid: str, call_id: str, *, now: float) -> None:
        keys = [self._res(rid), f"{self._tag}:call:{call_id}"]
        await self._redis.script(self._commit, keys, (rid, call_id))

    @_unavailable
    async def release(self, rid: str, *, now: float) -> None:
        keys = [self._res(rid), self._live]
        await self._redis.script(self._finish, keys, (rid, "release", "", ""))

    @_unavailable
    async def settle(
        self, call_id: str, *, actual_ms: int | None, actual_micro_usd: int | None, now: float
    ) -> None:
        rid = await self._redis.execute("GET", f"{self._tag}:call:{call_id}")
        if rid is None:
            return
        args = (
            rid,
            "settle",
            "" if actual_ms is None else actual_ms,
            "" if actual_micro_usd is None else actual_micro_usd,
        )
        await self._redis.script(self._finish, (self._res(rid), self._live), args)

    @_unavailable
    async def expire(self, now: float) -> list[str | None]:
        freed = await self._redis.script(
            self._expire, (self._live,), (repr(now), f"{self._tag}:res:")
        )
        return [str(c) if c else None for c in freed]

    @_unavailable
    async def peek(
        self, keys: Sequence[str], slot_keys: Sequence[str], *, now: float
    ) -> tuple[dict[str, int], dict[str, tuple[int, float | None]]]:
        commands: list[list[str]] = []
        if keys:
            commands.append(["MGET", *(self._k(k) for k in keys)])
        for key in slot_keys:
            commands.append(["ZRANGEBYSCORE", self._k(key), f"({now!r}", "+inf", "WITHSCORES"])
        out = await self._redis.pipeline(commands) if commands else []
        values: dict[str, int] = {}
        if keys:
            values = {k: int(v) for k, v in zip(keys, out.pop(0), strict=True) if v is not None}
        live: dict[str, tuple[int, float | None]] = {}
        for key, flat in zip(slot_keys, out, strict=True):
            ends = [float(score) for score in flat[1::2]]  # member, score, member, score, …
            live[key] = (len(ends), min(ends, default=None))
        return values, live

    @_unavailable
    async def ping(self) -> None:
        await self._redis.execute("PING")

    async def aclose(self) -> None:
        await self._redis.aclose()
