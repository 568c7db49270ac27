"""The Redis scripts behind ``relay.orphans``: a stream's progress mark, and the sweep that
settles the open entries of a relay process that died (both atomic, one call each)."""

from __future__ import annotations

# KEYS: entry, text, owned, owners, alive. ARGV: now_ms, owner, request id, the record
# ('' once registered), settlement keys of the limits and of the money (JSON lists), the
# worst case held, the text's byte offset, new text, overflow characters, usage JSON ('' for
# none), the entry's TTL (s), the owner's alive-until (ms), and what the tokens and plan
# windows counted at admission need to be corrected by once the stream is billed (JSON,
# with the record: ``relay.limits.cut_correction``).
# The record may be sent again (it changed: web searches counted since), keeping the
# entry's opening time. Returns 1 if the entry is (now) up to date, 0 if it was swept or
# was never registered.
MARK_LUA = """
local entry, text, owned, owners, alive = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ttl = tonumber(ARGV[12])
if redis.call('HEXISTS', entry, 'swept') == 1 then return 0 end
local seen = tonumber(redis.call('ZSCORE', alive, ARGV[2]) or '0')
if seen < tonumber(ARGV[13]) then redis.call('ZADD', alive, ARGV[13], ARGV[2]) end
if ARGV[4] ~= '' then
  redis.call('HSET', entry, 'record', ARGV[4], 'lim', ARGV[5], 'money', ARGV[6],
    'worst', ARGV[7], 'owner', ARGV[2], 'fix', ARGV[14] or '')
  redis.call('ZADD', owned, 'NX', ARGV[1], ARGV[3])
  redis.call('EXPIRE', owned, ttl)
  redis.call('SADD', owners, ARGV[2])
elseif redis.call('EXISTS', entry) == 0 then
  return 0
end
if ARGV[9] ~= '' then redis.call('SETRANGE', text, tonumber(ARGV[8]), ARGV[9]) end
redis.call('HSET', entry, 'over', ARGV[10])
if ARGV[11] ~= '' then redis.call('HSET', entry, 'usage', ARGV[11]) end
redis.call('EXPIRE', entry, ttl)
if redis.call('EXISTS', text) == 1 then redis.call('EXPIRE', text, ttl) end
return 1
"""

# KEYS: owned, owners, alive, usage queue. ARGV: now_ms, owner, the opening time (ms)
# before which an entry is settled even if its owner lives, how many at most, the key
# prefix, the tombstone's TTL (s).
# Settles the owner's open entries (all of them if the owner is not alive): frees each
# one's concurrency slots, holds its worst case (without expiry) until its event is
# written, queues its cut usage record (with what its tokens and plan windows need once
# it is billed: ``relay.metering.writer``), leaves a tombstone. Returns how many it queued,
# how many it looked at, and how many remain.
SWEEP_LUA = """
local owned, owners, alive, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[1])
local owner = ARGV[2]
local limit = tonumber(ARGV[4])
local prefix = ARGV[5]
local seen = tonumber(redis.call('ZSCORE', alive, owner) or '0')
local ids
if seen < now then
  ids = redis.call('ZRANGE', owned, 0, limit - 1)
else
  ids = redis.call('ZRANGEBYSCORE', owned, '-inf', ARGV[3], 'LIMIT', 0, limit)
end
local queued = 0
for _, request_id in ipairs(ids) do
  local entry = prefix .. ':open:' .. request_id
  local text = entry .. ':text'
  local f = redis.call('HMGET', entry, 'record', 'lim', 'money', 'worst', 'over', 'usage',
    'swept', 'fix')
  redis.call('ZREM', owned, request_id)
  if f[1] and not f[7] then
    local lim = cjson.decode(f[2])
    for i = 2, #lim, 3 do redis.call('ZREM', lim[i], request_id) end
    local worst = tonumber(f[4])
    local money = cjson.decode(f[3])
    for i = 1, #money, 3 do
      local held, holds, exp = money[i], money[i + 1], money[i + 2]
      local previous = tonumber(redis.call('HGET', holds, request_id) or '0')
      redis.call('ZREM', exp, request_id)
      redis.call('HSET', holds, request_id, worst)
      if worst ~= previous then redis.call('INCRBY', held, worst - previous) end
    end
    local delivered = redis.call('GET', text) or ''
    redis.call('RPUSH', queue, cjson.encode({cut = f[1], text = delivered,
      over = tonumber(f[5] or '0'), usage = f[6] or '', fix = f[8] or ''}))
    queued = queued + 1
  end
  redis.call('DEL', entry, text)
  redis.call('HSET', entry, 'swept', '1')
  redis.call('EXPIRE', entry, tonumber(ARGV[6]))
end
local left = redis.call('ZCARD', owned)
if left == 0 then redis.call('SREM', owners, owner) end
return {queued, #ids, left}
"""
