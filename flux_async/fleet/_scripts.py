"""The Lua scripts of :class:`~flux_async.fleet.RedisCoordinator`: every decision that two
processes could race on is one of these, run atomically on the Redis server (EVALSHA), never a
check in Python followed by a write. Text only: this module imports nothing.

Time is the server's (``TIME``), so the clocks of the machines never matter. A process is alive
while its score in the ``procs`` sorted set (its lease's expiry, in server milliseconds) is in
the future; a process that exited cleanly is kept there with score 0 while it still owns tasks
(they are orphans to adopt), and forgotten once it owns none.

Every script is idempotent for its caller (a token, a key, a process id), so a call whose answer
was lost can be sent again without taking anything twice. Keys other than ``KEYS`` are built
from the account's prefix (``ARGV``); every key of an account shares one hash tag (the account),
so on a Redis Cluster they live in one slot.
"""

from __future__ import annotations

__all__ = [
    "ACQUIRE",
    "ADOPT",
    "BATCH_CLAIM",
    "BATCH_FINISH",
    "BATCH_OPEN",
    "BATCH_PROGRESS",
    "BATCH_RELEASE",
    "BATCH_SWEEP",
    "BIND",
    "CLAIM",
    "CLAIM_STATE",
    "DISOWN",
    "DROP_CLAIM",
    "LEASE",
    "ORPHANS",
    "OWN",
    "PUBLISH_CLAIM",
    "RELEASE_ACTIVE",
    "RELEASE_RESERVATION",
    "RELEASE_TASK",
    "RESERVE",
    "SETTLE",
]

#: Prepended to every script: the server's time, and whether a process's lease is current.
_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function alive(procs, pid, now)
  local expiry = redis.call('ZSCORE', procs, pid)
  return expiry ~= false and tonumber(expiry) > now
end
"""

#: KEYS: procs. ARGV: pid, ttl_ms, mode ('start' | 'renew' | 'stop'), owned prefix,
#: active channel, claims channel.
#: start: the lease runs until now + ttl; 1. renew: the same, only while the lease is current
#: (0: it expired, the process counts as dead and must take a new id). stop: the lease ends
#: now (score 0, kept while the process owns tasks, else removed), waiters of both channels are
#: woken; 1.
LEASE = _COMMON + """
local procs, pid, ttl, mode = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]
local now = now_ms()
if mode == 'start' then
  redis.call('ZADD', procs, now + ttl, pid)
  return 1
elseif mode == 'renew' then
  if not alive(procs, pid, now) then return 0 end
  redis.call('ZADD', procs, now + ttl, pid)
  return 1
end
if redis.call('SCARD', ARGV[4] .. pid) > 0 then
  redis.call('ZADD', procs, 0, pid)
else
  redis.call('ZREM', procs, pid)
end
redis.call('PUBLISH', ARGV[5], '*')
redis.call('PUBLISH', ARGV[6], '*')
return 1
"""

#: KEYS: procs, slots, slot-tasks. ARGV: pid, token, provider, model, total cap (-1: none),
#: model cap (-1: none), active channel.
#: Frees every slot whose process is dead (each holder's lease read once; waiters are woken if
#: it freed any), counts the provider's slots and the model's, and takes one for ``token`` when
#: both counts are under their caps. Returns {status, provider count, model count}: status 1 taken (or the caller
#: held ``token``'s already; the counts include it), 0 full (nothing taken), -1 the caller's
#: own lease has expired (nothing taken), -2 another live process holds ``token``.
ACQUIRE = _COMMON + """
local procs, slots, tasks = KEYS[1], KEYS[2], KEYS[3]
local pid, token, provider, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local total_cap, model_cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = now_ms()
local all = redis.call('HGETALL', slots)
local total, per_model, freed, holder = 0, 0, 0, nil
local live = {}  -- each holder's lease looked up once, however many slots it holds
for i = 1, #all, 2 do
  local slot = cjson.decode(all[i + 1])
  if live[slot.p] == nil then live[slot.p] = alive(procs, slot.p, now) end
  if not live[slot.p] then
    redis.call('HDEL', slots, all[i])
    if slot.t and redis.call('HGET', tasks, slot.t) == all[i] then redis.call('HDEL', tasks, slot.t) end
    freed = freed + 1
  else
    if slot.v == provider then
      total = total + 1
      if slot.m == model then per_model = per_model + 1 end
    end
    if all[i] == token then holder = slot.p end
  end
end
if freed > 0 then redis.call('PUBLISH', ARGV[7], 'freed') end
if holder == pid then return {1, total, per_model} end
if holder then return {-2, total, per_model} end
if not alive(procs, pid, now) then return {-1, total, per_model} end
if (total_cap >= 0 and total >= total_cap) or (model_cap >= 0 and per_model >= model_cap) then
  return {0, total, per_model}
end
redis.call('HSET', slots, token, cjson.encode({p = pid, v = provider, m = model}))
return {1, total + 1, per_model + 1}
"""

#: KEYS: slots, slot-tasks. ARGV: token, active channel, pid.
#: Frees the caller's slot ``token`` and wakes waiters; 1, or 0 when the caller holds no such
#: slot (released already, freed as a dead process's, or another process's).
RELEASE_ACTIVE = """
local slots, tasks, token = KEYS[1], KEYS[2], ARGV[1]
local raw = redis.call('HGET', slots, token)
if not raw then return 0 end
local slot = cjson.decode(raw)
if slot.p ~= ARGV[3] then return 0 end
redis.call('HDEL', slots, token)
if slot.t and redis.call('HGET', tasks, slot.t) == token then redis.call('HDEL', tasks, slot.t) end
redis.call('PUBLISH', ARGV[2], 'released')
return 1
"""

#: KEYS: procs, slots, slot-tasks. ARGV: token, task id, active channel.
#: Binds ``token``'s slot to the accepted task, so any process can free it by task id. Returns
#: 1 bound; 0 the token holds no slot; 2 the task holds another live slot already (a second
#: process attached to it): ``token``'s slot is freed, the task is counted once.
BIND = _COMMON + """
local procs, slots, tasks = KEYS[1], KEYS[2], KEYS[3]
local token, task_id = ARGV[1], ARGV[2]
local raw = redis.call('HGET', slots, token)
if not raw then return 0 end
local other = redis.call('HGET', tasks, task_id)
if other and other ~= token then
  local other_raw = redis.call('HGET', slots, other)
  if other_raw and alive(procs, cjson.decode(other_raw).p, now_ms()) then
    redis.call('HDEL', slots, token)
    redis.call('PUBLISH', ARGV[3], 'released')
    return 2
  end
  if other_raw then redis.call('HDEL', slots, other) end
end
local slot = cjson.decode(raw)
slot.t = task_id
redis.call('HSET', slots, token, cjson.encode(slot))
redis.call('HSET', tasks, task_id, token)
return 1
"""

#: KEYS: slots, slot-tasks. ARGV: task id, active channel.
#: Frees the slot bound to the task, whichever process took it; 1, or 0 when none is bound.
RELEASE_TASK = """
local slots, tasks = KEYS[1], KEYS[2]
local token = redis.call('HGET', tasks, ARGV[1])
if not token then return 0 end
redis.call('HDEL', tasks, ARGV[1])
redis.call('HDEL', slots, token)
redis.call('PUBLISH', ARGV[2], 'released')
return 1
"""

#: KEYS: spend, reservations (of one provider). ARGV: key, micro-dollars, cap (-1: none).
#: Reserves when settled + reserved + amount <= cap. Returns {status, settled, reserved} in
#: micro-dollars after the call: status 1 reserved, 2 ``key`` held a reservation already (kept
#: unchanged), 0 refused (nothing held).
RESERVE = """
local spend, reservations, key = KEYS[1], KEYS[2], ARGV[1]
local amount, cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local settled = tonumber(redis.call('HGET', spend, 'settled') or '0')
local reserved = tonumber(redis.call('HGET', spend, 'reserved') or '0')
if redis.call('HEXISTS', reservations, key) == 1 then return {2, settled, reserved} end
if cap >= 0 and settled + reserved + amount > cap then return {0, settled, reserved} end
redis.call('HSET', reservations, key, amount)
redis.call('HINCRBY', spend, 'reserved', amount)
return {1, settled, reserved + amount}
"""

#: KEYS: spend, reservations. ARGV: key, micro-dollars (-1: what it reserved), model ('' none).
#: Turns ``key``'s reservation into settled spend (the model's total and job count too); 1, or
#: 0 when ``key`` holds no reservation (settled or released already: nothing changes).
SETTLE = """
local spend, reservations, key = KEYS[1], KEYS[2], ARGV[1]
local held = redis.call('HGET', reservations, key)
if not held then return 0 end
held = tonumber(held)
local amount = tonumber(ARGV[2])
if amount < 0 then amount = held end
redis.call('HDEL', reservations, key)
redis.call('HINCRBY', spend, 'reserved', -held)
redis.call('HINCRBY', spend, 'settled', amount)
if ARGV[3] ~= '' then
  redis.call('HINCRBY', spend, 'settled:' .. ARGV[3], amount)
  redis.call('HINCRBY', spend, 'jobs:' .. ARGV[3], 1)
end
return 1
"""

#: KEYS: spend, reservations. ARGV: key.
#: Drops ``key``'s reservation (no task was made); 1, or 0 when it held none.
RELEASE_RESERVATION = """
local held = redis.call('HGET', KEYS[2], ARGV[1])
if not held then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'reserved', -tonumber(held))
return 1
"""

#: KEYS: procs, claim, published. ARGV: pid, ttl_ms.
#: 1 the caller holds the claim (now, or already); 0 a live process holds it; 2 a task is
#: published under the key (nothing claimed); -1 the caller's lease has expired. A claim whose
#: process is dead, or older than its ttl, is free to take.
CLAIM = _COMMON + """
local procs, claim, published, pid = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
if redis.call('EXISTS', published) == 1 then return 2 end
local now = now_ms()
local owner = redis.call('GET', claim)
if owner == pid then
  redis.call('PEXPIRE', claim, ARGV[2])
  return 1
end
if owner and alive(procs, owner, now) then return 0 end
if not alive(procs, pid, now) then return -1 end
redis.call('SET', claim, pid, 'PX', ARGV[2])
return 1
"""

#: KEYS: procs, claim, published. ARGV: none.
#: {'done', task ref JSON} a task is published; {'held', pid} a live process holds the claim;
#: {'free', ''} nobody does (never claimed, dropped, expired, or its process is dead).
CLAIM_STATE = _COMMON + """
local ref = redis.call('GET', KEYS[3])
if ref then return {'done', ref} end
local owner = redis.call('GET', KEYS[2])
if owner and alive(KEYS[1], owner, now_ms()) then return {'held', owner} end
return {'free', ''}
"""

#: KEYS: claim, published. ARGV: pid, task ref JSON, retention_ms, claims channel, key.
#: Keeps the task under the key for the retention period, ends the caller's claim (another
#: process's claim is left alone) and wakes the key's waiters; 1.
PUBLISH_CLAIM = """
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('PUBLISH', ARGV[4], ARGV[5])
return 1
"""

#: KEYS: claim. ARGV: pid, claims channel, key.
#: Ends the caller's claim without a task and wakes the key's waiters; 1, or 0 when the caller
#: did not hold it.
DROP_CLAIM = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

#: KEYS: procs, tasks, task-owners. ARGV: pid, task id, task ref JSON, owned prefix.
#: Records that the caller watches the task; 1, 0 when another live process owns it (left
#: alone), -1 when the caller's lease has expired.
OWN = _COMMON + """
local procs, tasks, owners = KEYS[1], KEYS[2], KEYS[3]
local pid, task_id, prefix = ARGV[1], ARGV[2], ARGV[4]
local now = now_ms()
if not alive(procs, pid, now) then return -1 end
local owner = redis.call('HGET', owners, task_id)
if owner and owner ~= pid then
  if alive(procs, owner, now) then return 0 end
  redis.call('SREM', prefix .. owner, task_id)
end
redis.call('HSET', tasks, task_id, ARGV[3])
redis.call('HSET', owners, task_id, pid)
redis.call('SADD', prefix .. pid, task_id)
return 1
"""

#: KEYS: tasks, task-owners. ARGV: task id, owned prefix.
#: Forgets the task (settled: nobody needs to watch it); 1, or 0 when it was not owned.
DISOWN = """
local owner = redis.call('HGET', KEYS[2], ARGV[1])
if not owner then return 0 end
redis.call('SREM', ARGV[2] .. owner, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

#: KEYS: procs, tasks. ARGV: limit, owned prefix.
#: Up to ``limit`` task ref JSONs owned by dead processes (a random sample of each one's
#: tasks, so racing adopters tend to pick different ones). A dead process that owns nothing is
#: forgotten.
ORPHANS = _COMMON + """
local procs, tasks, limit, prefix = KEYS[1], KEYS[2], tonumber(ARGV[1]), ARGV[2]
local out = {}
for _, pid in ipairs(redis.call('ZRANGEBYSCORE', procs, '-inf', now_ms())) do
  local owned = prefix .. pid
  if redis.call('SCARD', owned) == 0 then
    redis.call('ZREM', procs, pid)
  else
    for _, task_id in ipairs(redis.call('SRANDMEMBER', owned, limit - #out)) do
      local ref = redis.call('HGET', tasks, task_id)
      if ref then out[#out + 1] = ref else redis.call('SREM', owned, task_id) end
    end
  end
  if #out >= limit then break end
end
return out
"""

#: KEYS: procs, task-owners. ARGV: pid, task id, owned prefix.
#: Takes over the task when its owner is dead; 1 taken (or the caller owns it already), 0 not
#: owned (settled) or owned by a live process (adopted first by another), -1 the caller's
#: lease has expired.
ADOPT = _COMMON + """
local procs, owners, pid, task_id, prefix = KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3]
local now = now_ms()
if not alive(procs, pid, now) then return -1 end
local owner = redis.call('HGET', owners, task_id)
if not owner then return 0 end
if owner == pid then return 1 end
if alive(procs, owner, now) then return 0 end
redis.call('SREM', prefix .. owner, task_id)
redis.call('SADD', prefix .. pid, task_id)
redis.call('HSET', owners, task_id, pid)
return 1
"""

# -- shared batches: the lines of one input file split between processes ----------------------
# Keys of batch <id> (prefix ``batch:<id>:``): ``meta`` hash {header, succeeded, failed},
# ``claims`` hash line index -> holding process id ('' : given back, for anyone to take),
# ``done`` hash line index -> its result record (JSON). A line is done once, claimed by at most
# one live process at a time, and a line held by a dead process is anyone's.

#: KEYS: meta, claims, done. ARGV: header JSON, retention_ms.
#: Records the header when the batch is new; {stored header, succeeded, failed, claimed}.
BATCH_OPEN = """
redis.call('HSETNX', KEYS[1], 'header', ARGV[1])
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[2]) end
local v = redis.call('HMGET', KEYS[1], 'header', 'succeeded', 'failed')
return {v[1], tonumber(v[2] or 0), tonumber(v[3] or 0), redis.call('HLEN', KEYS[2])}
"""

#: KEYS: procs, claims, done. ARGV: pid, line index...
#: Takes each line that is not done and held by nobody, by the caller or by a dead process;
#: {1, lines done, taken index...}, or {-1} when the caller's lease has expired.
BATCH_CLAIM = _COMMON + """
local procs, claims, done, pid = KEYS[1], KEYS[2], KEYS[3], ARGV[1]
local now = now_ms()
if not alive(procs, pid, now) then return {-1} end
local out = {1, redis.call('HLEN', done)}
for i = 2, #ARGV do
  local index = ARGV[i]
  if redis.call('HEXISTS', done, index) == 0 then
    local holder = redis.call('HGET', claims, index)
    if not holder or holder == pid or holder == '' or not alive(procs, holder, now) then
      redis.call('HSET', claims, index, pid)
      out[#out + 1] = tonumber(index)
    end
  end
end
return out
"""

#: KEYS: procs, claims. ARGV: pid, limit.
#: Takes up to ``limit`` claimed lines that were given back or whose process is dead;
#: {1, lines still held elsewhere (by live processes, or left over the limit), taken index...},
#: or {-1} when the caller's lease has expired.
BATCH_SWEEP = _COMMON + """
local procs, claims, pid, limit = KEYS[1], KEYS[2], ARGV[1], tonumber(ARGV[2])
local now = now_ms()
if not alive(procs, pid, now) then return {-1} end
local flat = redis.call('HGETALL', claims)
local out = {1, 0}
for i = 1, #flat, 2 do
  local index, holder = flat[i], flat[i + 1]
  if holder ~= pid then
    if holder ~= '' and alive(procs, holder, now) then
      out[2] = out[2] + 1
    elseif #out - 2 < limit then
      redis.call('HSET', claims, index, pid)
      out[#out + 1] = tonumber(index)
    else
      out[2] = out[2] + 1
    end
  end
end
return out
"""

#: KEYS: meta, claims, done. ARGV: pid, line index, result record JSON, 'succeeded' | 'failed',
#: retention_ms.
#: Records the line's result unless one is recorded already and ends its claim; 1 recorded,
#: 0 the line was done before (by another process: nothing is changed).
BATCH_FINISH = """
local meta, claims, done = KEYS[1], KEYS[2], KEYS[3]
local pid, index = ARGV[1], ARGV[2]
if redis.call('HSETNX', done, index, ARGV[3]) == 1 then
  redis.call('HINCRBY', meta, ARGV[4], 1)
  redis.call('HDEL', claims, index)
  for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, ARGV[5]) end
  return 1
end
if redis.call('HGET', claims, index) == pid then redis.call('HDEL', claims, index) end
return 0
"""

#: KEYS: claims. ARGV: pid, 'give' | 'drop', line index...
#: Ends the caller's claims on the lines: 'give' leaves them for any running process to take
#: (not sent), 'drop' for the batch's next run (failed without a result, or in doubt); lines
#: another process holds are left alone. Returns how many were released.
BATCH_RELEASE = """
local claims, pid, give = KEYS[1], ARGV[1], ARGV[2] == 'give'
local n = 0
for i = 3, #ARGV do
  if redis.call('HGET', claims, ARGV[i]) == pid then
    if give then redis.call('HSET', claims, ARGV[i], '') else redis.call('HDEL', claims, ARGV[i]) end
    n = n + 1
  end
end
return n
"""

#: KEYS: meta, claims. ARGV: none. {succeeded, failed, claimed}.
BATCH_PROGRESS = """
local v = redis.call('HMGET', KEYS[1], 'succeeded', 'failed')
return {tonumber(v[1] or 0), tonumber(v[2] or 0), redis.call('HLEN', KEYS[2])}
"""
