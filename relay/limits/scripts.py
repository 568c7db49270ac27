"""The Lua scripts that admit, settle and seed in one Redis round trip each."""

from __future__ import annotations

from relay.limits.shapes import WINDOW_BUCKETS

# Money keys per reserved scope, in this order (see ``money_keys``).
MONEY_KEYS = 5

# Frees a money scope's holds of ``ids`` (requests whose hold expired, or a lease's ids
# given back): their amounts leave the held total, and they leave the holds and expiries.
FREE_HOLDS_LUA = """
local function free_holds(held_key, holds_key, exp_key, ids)
  local amounts = redis.call('HMGET', holds_key, unpack(ids))
  local freed = 0
  for i = 1, #amounts do
    if amounts[i] then freed = freed + tonumber(amounts[i]) end
  end
  redis.call('HDEL', holds_key, unpack(ids))
  redis.call('ZREM', exp_key, unpack(ids))
  if freed ~= 0 then redis.call('DECRBY', held_key, freed) end
end
"""

# KEYS: per limit scope 4 keys (req, tok, conc, day), then per money scope MONEY_KEYS keys,
# then per plan window its counter.
# ARGV: now_ms, request ids (comma-separated: one, or a lease's, see ``relay.leases``),
# tokens per request, hold_ms, limit scope count, per limit scope 4 limits (-1 = none),
# then money scope count, worst-case cost per request, money hold ms, the generation a
# base must have reached, the oldest seeding time (ms) still fresh, then plan window count
# and per window: cap, bucket seconds, amount to count per request; last, the second to
# count the requests in (now, or a lease's last second: counted from now until a minute
# after it, so that no request the lease admits leaves a window before it should).
# Every limit is checked for all the ids at once, and only all of them are admitted.
# Returns {allowed, refused_kind, retry_ms, detail, then per limit scope: req_used,
# req_oldest, tok_used, tok_oldest, then per window: used, oldest bucket}, and when
# allowed, then per limit scope: requests in flight and tokens counted today (before this
# request; -1 where the scope has no such limit), then per money scope what it could still
# spend before this request's hold: ``relay.limits.Room``. ``detail`` is,
# when refused for money, the index of the scope that cannot cover the worst case, for
# 'plan' the index of the window, and for 'seed' the indexes to (re)seed, comma-separated.
# A window sums its current bucket and the WINDOW_BUCKETS before it (relay.limits.Window).
ACQUIRE_LUA = (
    FREE_HOLDS_LUA
    + """
local now_ms = tonumber(ARGV[1])
local now = math.floor(now_ms / 1000)
local ids = {}
for id in string.gmatch(ARGV[2], '[^,]+') do ids[#ids + 1] = id end
local n = #ids
local tokens = tonumber(ARGV[3])
local hold_ms = tonumber(ARGV[4])
local scopes = tonumber(ARGV[5])
local m_at = 6 + scopes * 4
local money = tonumber(ARGV[m_at]) or 0
local worst = tonumber(ARGV[m_at + 1]) or 0
local money_hold_ms = tonumber(ARGV[m_at + 2]) or 0
local min_gen = tonumber(ARGV[m_at + 3]) or 0
local fresh_after = tonumber(ARGV[m_at + 4]) or 0
local m_keys = scopes * 4
local windows = tonumber(ARGV[m_at + 5]) or 0
local at = tonumber(ARGV[m_at + 6 + windows * 3]) or now
local w_keys = m_keys + money * 5
local stats = {}
local room = {}
local lows = {}
local refused_kind = ''
local retry_ms = 0
local detail = ''

-- A minute's window: a hash of per-second counts (seconds now-59 to now) and two fields
-- of its own: 'sum', the total of those counts, and 'low', the oldest second counted (0
-- when none is). Seconds leave as time passes, each subtracted once, so that a call reads
-- a few fields whatever the rate; a window idle for over a minute is added up anew.
-- Returns what it holds, its oldest counted second and 'low' (nil: no window yet).
local cutoff = now - 59
local function recount(key)
  local fields = redis.call('HGETALL', key)
  if #fields == 0 then return 0, nil end
  local used, low, stale = 0, 0, {}
  for i = 1, #fields, 2 do
    local second = tonumber(fields[i])
    if second then
      if second < cutoff then
        stale[#stale + 1] = fields[i]
      else
        used = used + tonumber(fields[i + 1])
        if low == 0 or second < low then low = second end
      end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  redis.call('HSET', key, 'sum', used, 'low', low)
  return used, low
end
local function window(key)
  local meta = redis.call('HMGET', key, 'sum', 'low')
  local used, low = tonumber(meta[1]), tonumber(meta[2])
  if low == nil or (low > 0 and low < cutoff - 60) then
    used, low = recount(key)
  elseif low > 0 and low < cutoff then
    local stale = {}
    for second = low, cutoff - 1 do stale[#stale + 1] = second end
    local counts = redis.call('HMGET', key, unpack(stale))
    for i = 1, #counts do used = used - (tonumber(counts[i]) or 0) end
    redis.call('HDEL', key, unpack(stale))
    -- The oldest second left: at a steady rate, the first one looked at.
    low = 0
    if redis.call('HEXISTS', key, cutoff) == 1 then
      low = cutoff
    else
      local later = {}
      for second = cutoff + 1, now + 60 do later[#later + 1] = second end
      local found = redis.call('HMGET', key, unpack(later))
      for i = 1, #found do
        if found[i] then low = cutoff + i; break end
      end
    end
    if low == 0 and used ~= 0 then
      used, low = recount(key)  -- counts beyond a minute ahead: a clock far off
    else
      redis.call('HSET', key, 'sum', used, 'low', low)
    end
  end
  return used, low or 0, low
end

for s = 0, scopes - 1 do
  local req_key, tok_key, conc_key, day_key = KEYS[s*4+1], KEYS[s*4+2], KEYS[s*4+3], KEYS[s*4+4]
  local rpm = tonumber(ARGV[6 + s*4])
  local tpm = tonumber(ARGV[7 + s*4])
  local conc = tonumber(ARGV[8 + s*4])
  local daily = tonumber(ARGV[9 + s*4])
  local req_used, req_oldest, req_low = window(req_key)
  local tok_used, tok_oldest, tok_low = window(tok_key)
  lows[s * 2 + 1], lows[s * 2 + 2] = req_low or 0, tok_low or 0
  stats[#stats + 1] = req_used
  stats[#stats + 1] = req_oldest
  stats[#stats + 1] = tok_used
  stats[#stats + 1] = tok_oldest
  if refused_kind == '' then
    if rpm >= 0 and req_used + n > rpm then
      refused_kind = 'requests'
      retry_ms = ((req_oldest + 60) * 1000) - now_ms
    elseif tpm >= 0 and tok_used + tokens * n > tpm then
      refused_kind = 'tokens'
      retry_ms = ((tok_oldest > 0 and tok_oldest or now) + 60) * 1000 - now_ms
    end
  end
  local in_flight, day_used = -1, -1
  if refused_kind == '' and conc >= 0 then
    redis.call('ZREMRANGEBYSCORE', conc_key, '-inf', now_ms)
    in_flight = redis.call('ZCARD', conc_key)
    if in_flight + n > conc then
      refused_kind = 'concurrency'
      retry_ms = 1000
    end
  end
  if refused_kind == '' and daily >= 0 then
    day_used = tonumber(redis.call('GET', day_key) or '0')
    if day_used + tokens * n > daily then
      refused_kind = 'daily_tokens'
      retry_ms = -1
    end
  end
  room[#room + 1] = in_flight
  room[#room + 1] = day_used
end

-- Plan windows: sliding buckets, summed over the window (and a bucket more), stale ones dropped.
local w_buckets = {}
for w = 0, windows - 1 do
  local key = KEYS[w_keys + w + 1]
  local cap = tonumber(ARGV[m_at + 6 + w*3])
  local size = tonumber(ARGV[m_at + 7 + w*3])
  local amount = tonumber(ARGV[m_at + 8 + w*3])
  local current = math.floor(now / size)
  w_buckets[w + 1] = math.floor(at / size)
  local fields = redis.call('HGETALL', key)
  local used, oldest = 0, 0
  local stale = {}
  for i = 1, #fields, 2 do
    local bucket = tonumber(fields[i])
    if bucket < current - WINDOW_BUCKETS then
      stale[#stale + 1] = fields[i]
    else
      used = used + tonumber(fields[i + 1])
      if oldest == 0 or bucket < oldest then oldest = bucket end
    end
  end
  if #stale > 0 then redis.call('HDEL', key, unpack(stale)) end
  stats[#stats + 1] = used
  stats[#stats + 1] = oldest
  if refused_kind == '' and used + amount * n > cap then
    refused_kind = 'plan'
    detail = tostring(w)
    retry_ms = ((oldest > 0 and oldest or current) + WINDOW_BUCKETS + 1) * size * 1000 - now_ms
  end
end

-- Money: what a scope may still spend is its seeded base, less what was written to the
-- database since the seed, less what requests hold (in flight, or finished but unwritten).
local seeds = {}
for m = 0, money - 1 do
  local k = m_keys + m * 5
  local base_key, written_key, held_key, holds_key, exp_key =
    KEYS[k+1], KEYS[k+2], KEYS[k+3], KEYS[k+4], KEYS[k+5]
  local base = redis.call('HMGET', base_key, 'base', 'written', 'gen', 'at')
  if not base[1] or tonumber(base[3]) < min_gen or tonumber(base[4]) < fresh_after then
    seeds[#seeds + 1] = m
  elseif refused_kind == '' then
    local expired = redis.call('ZRANGEBYSCORE', exp_key, '-inf', now_ms, 'LIMIT', 0, 200)
    if #expired > 0 then free_holds(held_key, holds_key, exp_key, expired) end
    local available = tonumber(base[1]) + tonumber(base[2])
      - tonumber(redis.call('GET', written_key) or '0')
      - tonumber(redis.call('GET', held_key) or '0')
    if available < worst * n then
      refused_kind = 'funds'
      detail = tostring(m)
    end
    room[#room + 1] = available
  end
end

if refused_kind ~= '' then
  return {0, refused_kind, retry_ms, detail, unpack(stats)}
end
if #seeds > 0 then
  return {0, 'seed', 0, table.concat(seeds, ','), unpack(stats)}
end

-- Counts the requests' second in a window, which 'low' (from ``window``) keeps exact.
-- The expiry is set when a second's count starts: every later second restarts it.
local function count(key, amount, low)
  if redis.call('HINCRBY', key, at, amount) == amount then
    redis.call('EXPIRE', key, 120)
  end
  redis.call('HINCRBY', key, 'sum', amount)
  if low == 0 or at < low then redis.call('HSET', key, 'low', at) end
end

for s = 0, scopes - 1 do
  local req_key, tok_key, conc_key, day_key = KEYS[s*4+1], KEYS[s*4+2], KEYS[s*4+3], KEYS[s*4+4]
  local rpm = tonumber(ARGV[6 + s*4])
  local tpm = tonumber(ARGV[7 + s*4])
  local conc = tonumber(ARGV[8 + s*4])
  local daily = tonumber(ARGV[9 + s*4])
  if rpm >= 0 then count(req_key, n, lows[s * 2 + 1]) end
  if tpm >= 0 then count(tok_key, tokens * n, lows[s * 2 + 2]) end
  if conc >= 0 then
    for i = 1, n do redis.call('ZADD', conc_key, now_ms + hold_ms, ids[i]) end
    redis.call('PEXPIRE', conc_key, hold_ms + 60000)
  end
  if daily >= 0 and redis.call('INCRBY', day_key, tokens * n) == tokens * n then
    redis.call('EXPIRE', day_key, 172800)  -- the day's first count made the key
  end
end
for m = 0, money - 1 do
  local k = m_keys + m * 5
  -- Held once per request: a call run again (its reply was lost with its connection, and
  -- the relay sent it anew) must not hold it twice, which no settlement would release.
  for i = 1, n do
    if redis.call('HSETNX', KEYS[k+4], ids[i], worst) == 1 then
      redis.call('INCRBY', KEYS[k+3], worst)
    end
    redis.call('ZADD', KEYS[k+5], now_ms + money_hold_ms, ids[i])
  end
  for i = 1, 5 do redis.call('EXPIRE', KEYS[k+i], MONEY_TTL) end
end
for w = 0, windows - 1 do
  local key = KEYS[w_keys + w + 1]
  local size = tonumber(ARGV[m_at + 7 + w*3])
  local amount = tonumber(ARGV[m_at + 8 + w*3])
  if amount ~= 0 then redis.call('HINCRBY', key, w_buckets[w + 1], amount * n) end
  redis.call('EXPIRE', key, (WINDOW_BUCKETS + 2) * size + 60)
end
for i = 1, #room do stats[#stats + 1] = room[i] end
return {1, '', 0, '', unpack(stats)}
""".replace("MONEY_TTL", "3024000").replace(  # 35 days: longer than any period a scope counts
        "WINDOW_BUCKETS", str(WINDOW_BUCKETS)
    )
)

# What a request's settlement corrects once its real tokens (or cost) are known: the
# minute's and the day's token counts of a limit scope (``delta``: real less reserved), and
# a plan window's bucket. Counts whose window or day has passed are left alone.
CORRECTIONS_LUA = """
local function correct_tokens(tok_key, day_key, bucket, delta)
  if delta == 0 then return end
  if redis.call('HEXISTS', tok_key, bucket) == 1 then
    redis.call('HINCRBY', tok_key, bucket, delta)
    redis.call('HINCRBY', tok_key, 'sum', delta)
  end
  if redis.call('EXISTS', day_key) == 1 then
    redis.call('INCRBY', day_key, delta)
  end
end
local function correct_window(key, bucket, change)
  if change ~= 0 and redis.call('HEXISTS', key, bucket) == 1 then
    redis.call('HINCRBY', key, bucket, change)
  end
end
"""

# KEYS: as for acquire, then the usage queue, then (for a stream with an open entry, see
# ``relay.orphans``) the entry, its text and its owner's set. ARGV: request_id, bucket
# second, token delta, limit scope count, money scope count, worst-case cost held, the
# actual cost (-1: not known yet, keep holding the worst case until the event is written),
# the usage event to queue ('' for none), '1' if the request has an open entry, then the
# plan window count and per window: its bucket and the correction to what was counted,
# then how long (ms) the request's settled mark is kept; the windows' counters come next
# to last, and the last key is the settled mark.
# Returns 0, doing nothing, when a sweeper already settled the request as cut, and 1,
# doing nothing, when this request was settled already: the script pipe sends a call
# again whose connection broke before its reply (``relay.batching``), and Redis may have
# run it; its token and plan corrections must not count twice, nor its event be queued
# twice (both copies would be confirmed as written, adding its cost to ``written`` twice).
FINISH_LUA = (
    CORRECTIONS_LUA
    + """
local request_id = ARGV[1]
local bucket = ARGV[2]
local delta = tonumber(ARGV[3])
local scopes = tonumber(ARGV[4])
local money = tonumber(ARGV[5])
local worst = tonumber(ARGV[6])
local cost = tonumber(ARGV[7])
local queue_at = scopes * 4 + money * 5 + 1
if ARGV[9] == '1' then
  local entry = KEYS[queue_at + 1]
  if redis.call('HEXISTS', entry, 'swept') == 1 then return 0 end
end
if not redis.call('SET', KEYS[#KEYS], '1', 'NX', 'PX', ARGV[#ARGV]) then return 1 end
if ARGV[9] == '1' then
  redis.call('DEL', KEYS[queue_at + 1], KEYS[queue_at + 2])
  redis.call('ZREM', KEYS[queue_at + 3], request_id)
end
for s = 0, scopes - 1 do
  redis.call('ZREM', KEYS[s*4+3], request_id)
  correct_tokens(KEYS[s*4+2], KEYS[s*4+4], bucket, delta)
end
local amount = cost >= 0 and cost or worst
for m = 0, money - 1 do
  local k = scopes * 4 + m * 5
  local held_key, holds_key, exp_key = KEYS[k+3], KEYS[k+4], KEYS[k+5]
  local previous = tonumber(redis.call('HGET', holds_key, request_id) or '0')
  redis.call('ZREM', exp_key, request_id)
  if amount > 0 then
    -- Held, now without expiry, until the usage event is in the database.
    redis.call('HSET', holds_key, request_id, amount)
  else
    redis.call('HDEL', holds_key, request_id)
  end
  if amount ~= previous then redis.call('INCRBY', held_key, amount - previous) end
end
local w_at = queue_at + (ARGV[9] == '1' and 3 or 0)
for w = 0, (tonumber(ARGV[10]) or 0) - 1 do
  correct_window(KEYS[w_at + w + 1], ARGV[11 + w*2], tonumber(ARGV[12 + w*2]))
end
if ARGV[8] ~= '' then
  redis.call('RPUSH', KEYS[queue_at], ARGV[8])
end
return 1
"""
)

# KEYS: per limit scope its tokens and day counters, then per plan window its counter.
# ARGV: the admission's bucket second, the token correction, the limit scope count, the
# plan window count, then per window its bucket and correction.
# The corrections of a stream cut by a lost relay process, once its event is written with
# the tokens counted from what it delivered (``relay.metering.writer``): its own
# settlement never ran, so what its admission reserved would otherwise stay counted.
CORRECT_LUA = (
    CORRECTIONS_LUA
    + """
local bucket = ARGV[1]
local delta = tonumber(ARGV[2])
local scopes = tonumber(ARGV[3])
for s = 0, scopes - 1 do
  correct_tokens(KEYS[s*2+1], KEYS[s*2+2], bucket, delta)
end
for w = 0, tonumber(ARGV[4]) - 1 do
  correct_window(KEYS[scopes*2 + w + 1], ARGV[5 + w*2], tonumber(ARGV[6 + w*2]))
end
return 1
"""
)

# KEYS: per scope: base, written. ARGV: generation, now_ms, the seeding time (ms) from
# which a base of the same generation is fresh and kept, then per scope: base, the written
# total read before the database was asked. A newer generation is never replaced.
SEED_LUA = """
local gen = tonumber(ARGV[1])
local fresh_after = tonumber(ARGV[3])
for s = 0, (#KEYS / 2) - 1 do
  local base_key = KEYS[s*2+1]
  local seen = redis.call('HMGET', base_key, 'gen', 'at')
  local current = tonumber(seen[1] or '-1')
  local at = tonumber(seen[2] or '-1')
  if current < gen or (current == gen and at < fresh_after) then
    redis.call('HSET', base_key, 'base', ARGV[4 + s*2], 'written', ARGV[5 + s*2],
      'gen', gen, 'at', ARGV[2])
    redis.call('EXPIRE', base_key, MONEY_TTL)
  end
end
return 1
""".replace("MONEY_TTL", "3024000")

# KEYS: as for acquire (limit scopes' keys of the lease's second, money scopes' keys, plan
# windows' counters), then per id its settled mark. ARGV: the second counted in, tokens
# per request, limit scope count, per limit scope 4 limits (-1 = none), money scope count,
# plan window count and per window its bucket seconds and amount per request, how long
# (ms) the settled marks are kept, then the ids.
# A lease's ids that no request took (``relay.leases``), given back: each is uncounted as
# if never admitted (its request, tokens, slot, money hold and plan amounts), once: an id
# already settled (given back before, by a call sent again) is skipped.
RETURN_LUA = (
    FREE_HOLDS_LUA
    + """
local at = ARGV[1]
local tokens = tonumber(ARGV[2])
local scopes = tonumber(ARGV[3])
local m_at = 4 + scopes * 4
local money = tonumber(ARGV[m_at])
local windows = tonumber(ARGV[m_at + 1])
local mark_ms = ARGV[m_at + 2 + windows * 2]
local ids_at = m_at + 3 + windows * 2
local w_keys = scopes * 4 + money * 5
local marks_at = w_keys + windows
local ids = {}
for i = ids_at, #ARGV do
  if redis.call('SET', KEYS[marks_at + i - ids_at + 1], '1', 'NX', 'PX', mark_ms) then
    ids[#ids + 1] = ARGV[i]
  end
end
local n = #ids
if n == 0 then return 0 end
local function uncount(key, amount)
  if amount ~= 0 and redis.call('HEXISTS', key, at) == 1 then
    redis.call('HINCRBY', key, at, -amount)
    redis.call('HINCRBY', key, 'sum', -amount)
  end
end
for s = 0, scopes - 1 do
  local req_key, tok_key, conc_key, day_key = KEYS[s*4+1], KEYS[s*4+2], KEYS[s*4+3], KEYS[s*4+4]
  if tonumber(ARGV[4 + s*4]) >= 0 then uncount(req_key, n) end
  if tonumber(ARGV[5 + s*4]) >= 0 then uncount(tok_key, tokens * n) end
  if tonumber(ARGV[6 + s*4]) >= 0 then redis.call('ZREM', conc_key, unpack(ids)) end
  if tonumber(ARGV[7 + s*4]) >= 0 and redis.call('EXISTS', day_key) == 1 then
    redis.call('DECRBY', day_key, tokens * n)
  end
end
for m = 0, money - 1 do
  local k = scopes * 4 + m * 5
  free_holds(KEYS[k+3], KEYS[k+4], KEYS[k+5], ids)
end
for w = 0, windows - 1 do
  local key = KEYS[w_keys + w + 1]
  local size = tonumber(ARGV[m_at + 2 + w*2])
  local amount = tonumber(ARGV[m_at + 3 + w*2]) * n
  local bucket = math.floor(tonumber(at) / size)
  if amount ~= 0 and redis.call('HEXISTS', key, bucket) == 1 then
    redis.call('HINCRBY', key, bucket, -amount)
  end
end
return n
"""
)
