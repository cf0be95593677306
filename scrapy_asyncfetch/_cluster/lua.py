"""The frontier's Lua scripts: each runs atomically in Redis, one round trip per call.

Layout under the crawl's prefix ``P`` (see :mod:`.keys`):

``P req``            hash   id -> domain NUL payload (queued or in flight, no outcome yet)
``P q:<domain>``     list   ids queued for a domain, oldest first
``P ready``          zset   unleased domain with queued ids -> earliest next start (ms)
``P owner``          hash   leased domain -> worker
``P held:<worker>``  set    domains a worker leases
``P inflight:<w>``   set    ids a worker took and has not given an outcome for
``P workers``        zset   worker -> when its lease ends (ms)
``P hungry``         zset   worker -> when it last asked for domains and got fewer (ms)
``P next``           hash   domain -> earliest next start (ms), kept across leases
``P state``          hash   domain -> its politeness and breaker state (JSON) at release
``P seen``           set    fingerprints (hex) of requests that entered the crawl
``P outcomes``       hash   id -> outcome record (JSON): exactly one per id
``P stats``          hash   cluster-wide counters

Times are Redis's own clock (``TIME``), so workers' clocks never have to agree.
"""

from __future__ import annotations

_PRELUDE = r"""
local P = string.sub(KEYS[1], 1, -4)
-- A worker that asked for domains and got fewer counts in the fair share this long.
local HUNGRY_MS = 2000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function domain_of(value)
  local cut = string.find(value, '\0', 1, true)
  return string.sub(value, 1, cut - 1), string.sub(value, cut + 1)
end

-- Make an unleased domain with queued ids leasable, no earlier than its next start.
local function make_ready(domain)
  if redis.call('HEXISTS', P .. 'owner', domain) == 1 then return end
  if redis.call('LLEN', P .. 'q:' .. domain) == 0 then return end
  local at = tonumber(redis.call('HGET', P .. 'next', domain) or '0')
  redis.call('ZADD', P .. 'ready', 'NX', at, domain)
end

local function release(worker, domain)
  redis.call('HDEL', P .. 'owner', domain)
  redis.call('SREM', P .. 'held:' .. worker, domain)
  make_ready(domain)
end

-- Give a worker's leases back: its ids go back to the FRONT of their queues.
local function free_worker(worker)
  local ids = redis.call('SMEMBERS', P .. 'inflight:' .. worker)
  for _, id in ipairs(ids) do
    local value = redis.call('HGET', P .. 'req', id)
    if value then
      local domain = domain_of(value)
      redis.call('LPUSH', P .. 'q:' .. domain, id)
    end
  end
  redis.call('DEL', P .. 'inflight:' .. worker)
  local domains = redis.call('SMEMBERS', P .. 'held:' .. worker)
  for _, domain in ipairs(domains) do
    redis.call('HDEL', P .. 'owner', domain)
  end
  redis.call('DEL', P .. 'held:' .. worker)
  for _, id in ipairs(ids) do
    local value = redis.call('HGET', P .. 'req', id)
    if value then make_ready((domain_of(value))) end
  end
  for _, domain in ipairs(domains) do make_ready(domain) end
  redis.call('ZREM', P .. 'workers', worker)
  redis.call('ZREM', P .. 'hungry', worker)
  return #ids
end
"""

#: One call per tick of a worker: record outcomes, push new requests, refill or release
#: the domains it leases, lease new ones.
#:
#: ARGV: worker, lease_ms, n_settle, n_push, n_refill, n_take, batch, then
#: n_settle x (id, kind, record), n_push x (id, fingerprint, domain, payload, replace),
#: n_refill x (domain, want, idle, state, remaining_ms).
#: Returns {duplicates, lost, released, groups, queued_or_leased, ms_to_next_ready,
#: settled, reaped, share}: groups is a list of {domain, state, id, payload, id,
#: payload...}; share, how many domains this worker may lease now.
SYNC = (
    _PRELUDE
    + r"""
local worker = ARGV[1]
local lease = tonumber(ARGV[2])
local n_settle, n_push = tonumber(ARGV[3]), tonumber(ARGV[4])
local n_refill, n_take = tonumber(ARGV[5]), tonumber(ARGV[6])
local batch = tonumber(ARGV[7])
local i = 8
-- 1: newly added, so any earlier lease of this worker was reaped.
local reaped = redis.call('ZADD', P .. 'workers', 'GT', now + lease, worker)
local inflight = P .. 'inflight:' .. worker

local settled = 0
for _ = 1, n_settle do
  local id, kind, record = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  if redis.call('HEXISTS', P .. 'outcomes', id) == 0 then
    -- Ours, or a request that never entered the frontier. A request still in the
    -- frontier but not ours was taken back from us (lease expired): it is fetched again.
    if redis.call('SREM', inflight, id) == 1 or redis.call('HEXISTS', KEYS[1], id) == 0 then
      redis.call('HSET', P .. 'outcomes', id, record)
      redis.call('HDEL', KEYS[1], id)
      redis.call('HINCRBY', P .. 'stats', kind, 1)
      settled = settled + 1
    end
  end
end

local duplicates = {}
for _ = 1, n_push do
  local id, fp, domain = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local payload, replace = ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local value = domain .. '\0' .. payload
  local applied
  if replace == '0' then
    applied = redis.call('HEXISTS', KEYS[1], id) == 1
  else
    applied = fp ~= '' and redis.call('HGET', KEYS[1], id) == value
  end
  if applied or redis.call('HEXISTS', P .. 'outcomes', id) == 1 then
    -- this batch was applied once already (the reply was lost), or the request was
    -- fetched elsewhere meanwhile: nothing to do
  elseif fp ~= '' and redis.call('SADD', P .. 'seen', fp) == 0 then
    -- For a redirect (replace, with a fingerprint) the request it replaces stays in
    -- flight until the worker records its outcome: filtered, as Scrapy filters it.
    table.insert(duplicates, id)
    redis.call('HINCRBY', P .. 'stats', 'duplicates', 1)
  else
    redis.call('HSET', KEYS[1], id, value)
    if replace == '0' then
      redis.call('HINCRBY', P .. 'stats', 'requests', 1)
    end
    -- A replacement goes back to a queue only if still ours: if our lease was reaped,
    -- the id is queued or in flight elsewhere already (now as this version of it).
    if replace == '0' or redis.call('SREM', inflight, id) == 1 then
      redis.call('RPUSH', P .. 'q:' .. domain, id)
      make_ready(domain)
    end
  end
end

-- Up to n ids of a domain for this worker; ids given an outcome meanwhile are dropped.
local function take(domain, n, group)
  local ids = redis.call('LPOP', P .. 'q:' .. domain, n)
  if not ids then return 0 end
  local count = 0
  for _, id in ipairs(ids) do
    local value = redis.call('HGET', KEYS[1], id)
    if value and redis.call('HEXISTS', P .. 'outcomes', id) == 0 then
      redis.call('SADD', inflight, id)
      local _, payload = domain_of(value)
      table.insert(group, id)
      table.insert(group, payload)
      count = count + 1
    end
  end
  return count
end

local lost, released, groups = {}, {}, {}
for _ = 1, n_refill do
  local domain, want, idle = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2]
  local state, remaining = ARGV[i + 3], tonumber(ARGV[i + 4])
  i = i + 5
  if redis.call('HGET', P .. 'owner', domain) ~= worker then
    table.insert(lost, domain)
  else
    local group = {domain, ''}
    if want > 0 and take(domain, want, group) > 0 then
      table.insert(groups, group)
    elseif idle == '1' then
      redis.call('HSET', P .. 'next', domain, now + remaining)
      if state == '' then
        redis.call('HDEL', P .. 'state', domain)
      else
        redis.call('HSET', P .. 'state', domain, state)
      end
      release(worker, domain)
      table.insert(released, domain)
    end
  end
end

-- A fair share of the domains with requests, among the workers that lease some or
-- asked for more than they got within the last HUNGRY_MS: a worker that leased more
-- (it came first) lets the excess go as it drains, and takes no more than its share.
local busy = redis.call('HLEN', P .. 'owner') + redis.call('ZCARD', P .. 'ready')
local sharing = 0
for _, other in ipairs(redis.call('ZRANGE', P .. 'workers', 0, -1)) do
  if other == worker or redis.call('SCARD', P .. 'held:' .. other) > 0
      or tonumber(redis.call('ZSCORE', P .. 'hungry', other) or '0') > now - HUNGRY_MS then
    sharing = sharing + 1
  end
end
local share = math.ceil(busy / sharing)
local asked = n_take
n_take = math.min(n_take, share - redis.call('SCARD', P .. 'held:' .. worker))
local leased = 0

if n_take > 0 then
  local domains = redis.call('ZRANGEBYSCORE', P .. 'ready', '-inf', now, 'LIMIT', 0, n_take)
  for _, domain in ipairs(domains) do
    redis.call('ZREM', P .. 'ready', domain)
    if redis.call('HSETNX', P .. 'owner', domain, worker) == 1 then
      redis.call('SADD', P .. 'held:' .. worker, domain)
      local group = {domain, redis.call('HGET', P .. 'state', domain) or ''}
      if take(domain, batch, group) > 0 then
        table.insert(groups, group)
        leased = leased + 1
      else
        release(worker, domain)
      end
    end
  end
end
if leased < asked then
  redis.call('ZADD', P .. 'hungry', now, worker)
end

local first = redis.call('ZRANGE', P .. 'ready', 0, 0, 'WITHSCORES')
local to_next = -1
if first[2] then to_next = math.max(0, tonumber(first[2]) - now) end
return {
  duplicates, lost, released, groups, redis.call('HLEN', KEYS[1]), to_next, settled, reaped,
  share,
}
"""
)

#: Every third of a lease: renew this worker's lease and give back those of workers whose
#: lease expired; or, with leaving = 1, give back this worker's own (a clean close).
#:
#: ARGV: worker, lease_ms, leaving, then (domain, state, remaining_ms) triples to store.
#: Returns {ids put back, workers reaped, 1 if this worker had been reaped, queued_or_leased}.
KEEP = (
    _PRELUDE
    + r"""
local worker = ARGV[1]
local lease = tonumber(ARGV[2])
local leaving = ARGV[3] == '1'
local i = 4
while ARGV[i] do
  redis.call('HSET', P .. 'next', ARGV[i], now + tonumber(ARGV[i + 2]))
  if ARGV[i + 1] == '' then
    redis.call('HDEL', P .. 'state', ARGV[i])
  else
    redis.call('HSET', P .. 'state', ARGV[i], ARGV[i + 1])
  end
  i = i + 3
end
local requeued, reaped, was_reaped = 0, 0, 0
if leaving then
  requeued = free_worker(worker)
else
  -- newly added: this worker's earlier lease was reaped (or this is its first call)
  was_reaped = redis.call('ZADD', P .. 'workers', 'GT', now + lease, worker)
  local expired = redis.call('ZRANGEBYSCORE', P .. 'workers', '-inf', now)
  for _, dead in ipairs(expired) do
    if dead ~= worker then
      requeued = requeued + free_worker(dead)
      reaped = reaped + 1
    end
  end
  if reaped > 0 then
    redis.call('HINCRBY', P .. 'stats', 'reaped_workers', reaped)
    redis.call('HINCRBY', P .. 'stats', 'requeued', requeued)
  end
end
return {requeued, reaped, was_reaped, redis.call('HLEN', KEYS[1])}
"""
)
