"""The Lua scripts of :class:`~flux_async.fleet.RedisLedger`: every change of the shared ledger
is one script, run atomically on the server, so that no two processes can both claim a key and
the spend totals always move with the settlement that changes them. Text only: this module
imports nothing (the key layout is described in ``_ledger``'s docstring).

Every value is stored as the string the client sent (floats as Python's ``repr``), so an entry
reads back exactly; Lua does arithmetic only on whole micro-dollars and counts.
"""

from __future__ import annotations

from typing import Final

__all__ = ["ACCEPT", "INTEND", "LOAD", "SETTLE"]

#: KEYS: entry, unsettled index. ARGV: key, provider, model, digest, intended_at, reserved_usd
#: ('' for none), images, claim token. Returns nil when the key is now ours (recorded, or
#: recorded earlier by this same call's token), else the recorded entry as HGETALL pairs.
#: A settled ``not_submitted`` entry is replaced (no task exists; its totals stay counted).
INTEND: Final = """
local entry = KEYS[1]
if redis.call('EXISTS', entry) == 1 then
  local status = redis.call('HGET', entry, 'status')
  if status ~= 'not_submitted' then
    return redis.call('HGETALL', entry)
  end
  redis.call('DEL', entry)
end
redis.call('HSET', entry, 'key', ARGV[1], 'provider', ARGV[2], 'model', ARGV[3],
  'digest', ARGV[4], 'intended_at', ARGV[5], 'images', ARGV[7], 'claim', ARGV[8])
if ARGV[6] ~= '' then
  redis.call('HSET', entry, 'reserved_usd', ARGV[6])
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[1])
return false
"""

#: KEYS: entry. ARGV: the task ref as JSON, accepted_at. Returns the entry as HGETALL pairs;
#: an error when no intent is recorded for the key.
ACCEPT: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('no intent recorded for the key')
end
redis.call('HSET', KEYS[1], 'ref', ARGV[1], 'accepted_at', ARGV[2])
return redis.call('HGETALL', KEYS[1])
"""

#: KEYS: entry, unsettled index, spend totals. ARGV: key, status, settled_at, '1' when an
#: error is given, the error, cost source ('' for no cost), cost usd ('' for none), cost in
#: micro-dollars ('' for none), milliseconds to keep the settled entry ('0': for ever).
#: Returns 1, or 0 when no entry is recorded for the key (nothing is changed).
#: A second settlement replaces the first in the totals, as in ``_ledger_entries``.
SETTLE: Final = """
local entry = KEYS[1]
if redis.call('EXISTS', entry) == 0 then
  return 0
end
local f = redis.call('HMGET', entry, 'provider', 'model', 'images', 'status', 'cost_source', 'cost_micros')
local images = tonumber(f[3]) or 1
local function counts(status, source, micros)
  if not status then return 0, 0, 0, 0 end
  if not source and status == 'not_submitted' then return 0, 0, 0, 0 end
  if micros then return 1, tonumber(micros), 0, 0 end
  return 1, 0, 1, images
end
local oj, om, ouj, oui = counts(f[4], f[5], f[6])
local source = false
if ARGV[6] ~= '' then source = ARGV[6] end
local micros = false
if ARGV[8] ~= '' then micros = ARGV[8] end
local nj, nm, nuj, nui = counts(ARGV[2], source, micros)
local base = f[1] .. ':' .. f[2] .. ':'
redis.call('HINCRBY', KEYS[3], base .. 'jobs', nj - oj)
redis.call('HINCRBY', KEYS[3], base .. 'micros', nm - om)
redis.call('HINCRBY', KEYS[3], base .. 'unpriced_jobs', nuj - ouj)
redis.call('HINCRBY', KEYS[3], base .. 'unpriced_images', nui - oui)
redis.call('HDEL', entry, 'error', 'cost_source', 'cost_usd', 'cost_micros')
redis.call('HSET', entry, 'status', ARGV[2], 'settled_at', ARGV[3])
if ARGV[4] == '1' then redis.call('HSET', entry, 'error', ARGV[5]) end
if source then redis.call('HSET', entry, 'cost_source', source) end
if ARGV[7] ~= '' then redis.call('HSET', entry, 'cost_usd', ARGV[7]) end
if micros then redis.call('HSET', entry, 'cost_micros', micros) end
redis.call('ZREM', KEYS[2], ARGV[1])
if tonumber(ARGV[9]) > 0 then redis.call('PEXPIRE', entry, ARGV[9]) end
return 1
"""

#: KEYS: unsettled index, spend totals. ARGV: the entry key prefix. Returns, as one snapshot,
#: the totals as HGETALL pairs, then every unsettled entry as HGETALL pairs (oldest intent
#: first; an index member whose entry is gone comes back empty).
LOAD: Final = """
local out = {redis.call('HGETALL', KEYS[2])}
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
for i, key in ipairs(keys) do
  out[i + 1] = redis.call('HGETALL', ARGV[1] .. key)
end
return out
"""
