-- Leases due jobs of one queue to a worker.
-- ARGV: prefix, queue, now_ms, max, lease_ms, worker slot
-- Returns {next_due_ms or '', ids, envelopes, attempts so far, ended,
-- segment ranges (see step 5)}, or {'paused', ended}; `ended` lists id, callback URL, attempts of jobs whose
-- last lease expired (now dead) and that asked to be told.
local prefix, queue = ARGV[1], ARGV[2]
local now, max, lease, slot = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local qk = prefix .. ':q:' .. queue

-- 1. Leases that expired: the worker died or stalled. Bounded per call, so
--    any backlog is worked off over several fetches, never in one reply.
--    A segment range that expired first moves its unacknowledged jobs out
--    to per-job leases, which then expire like any other.
local ended = {}
local function expired_leases()
  return redis.call('ZRANGEBYSCORE', qk .. ':leased', '-inf', lease_score(now, SLOTS - 1),
    'LIMIT', 0, 1000)
end
local expired = expired_leases()
local ranges = false
for _, member in ipairs(expired) do
  if string.byte(member, 1) == 64 then
    ranges = true
    local s, from, to = parse_range(member)
    local states = redis.call('GETRANGE', seg_key(prefix, s) .. ':s', from, to - 1)
    for i = from, to - 1 do
      if string.byte(states, i - from + 1) == 48 then move_out_running(prefix, seg_id(s, i), now) end
    end
  end
end
if ranges then expired = expired_leases() end
for _, id in ipairs(expired) do
  redis.call('ZREM', qk .. ':leased', id)
  local env = string.byte(id, 1) ~= 64 and redis.call('HGET', prefix .. ':jobs', id)
  if not env and string.byte(id, 1) == 64 then
    -- A range with nothing left to move out (cannot happen while the
    -- counts hold): dropped, so it does not come back every fetch.
    redis.call('HINCRBY', qk .. ':stats', 'sg', -1)
  elseif env then
    local job = cjson.decode(env)
    local attempts = redis.call('HINCRBY', prefix .. ':att', id, 1)
    key_done(qk, job.k)
    if attempts >= job.ma then
      redis.call('HSET', prefix .. ':err', id, cjson.encode({
        e = 'lease expired: the worker stopped during the last attempt', t = now }))
      redis.call('ZADD', qk .. ':dead', now, id)
      if job.cb then
        ended[#ended + 1] = id
        ended[#ended + 1] = job.cb
        ended[#ended + 1] = attempts
      end
    else
      requeue(prefix, qk, id, job.pr, job.k)
    end
  end
end

-- 2. Delayed jobs and retries that are due, up to 100,000 per call: a
--    whole wave that comes due together is runnable at once (priorities
--    then apply), without ever building one unbounded reply.
local DUE_LIMIT = 100000
local due = redis.call('ZRANGEBYSCORE', qk .. ':delayed', '-inf', now, 'LIMIT', 0, DUE_LIMIT)
if #due > 0 then
  local wait, prio, keyed = {}, {}, {}
  for _, member in ipairs(due) do
    if string.find(member, '#', 1, true) then
      keyed[#keyed + 1] = member
    elseif string.find(member, '|', 1, true) then
      prio[#prio + 1] = member
    else
      wait[#wait + 1] = member
    end
  end
  if #due < DUE_LIMIT then
    redis.call('ZREMRANGEBYSCORE', qk .. ':delayed', '-inf', now)
  else
    bulk('ZREM', qk .. ':delayed', due)
  end
  bulk('RPUSH', qk .. ':wait', wait)
  for _, member in ipairs(prio) do
    local id, priority = parse_delayed(member)
    requeue(prefix, qk, id, priority)
  end
  for _, member in ipairs(keyed) do
    local id, _, key = parse_delayed(member)
    push_keyed(qk, key, id, false)
  end
end

-- 3. A paused queue keeps its jobs.
if redis.call('SISMEMBER', prefix .. ':paused', queue) == 1 then
  return {'paused', ended}
end

-- Takes up to `n` ids from the head of `list` into `ids`.
local function take(ids, list, n)
  if n <= 0 then return 0 end
  local popped = redis.call('LPOP', list, n)
  if not popped then return 0 end
  for _, id in ipairs(popped) do ids[#ids + 1] = id end
  return #popped
end

local ids
-- Takes up to `n` jobs from the head of the wait list: ids into `ids`,
-- ranges of segments into `segs` (a segment element partly taken stays at
-- the head, rewritten to what is left).
local segs = {}
local function take_wait(n)
  if n <= 0 then return 0 end
  local wait = qk .. ':wait'
  local items = redis.call('LRANGE', wait, 0, n - 1)
  local taken, used = 0, 0
  for _, item in ipairs(items) do
    if taken >= n then break end
    if string.byte(item, 1) == 64 then
      local s, from, to = parse_range(item)
      local last = math.min(to, from + n - taken)
      segs[#segs + 1] = {s, from, last}
      taken = taken + last - from
      if last < to then
        redis.call('LSET', wait, used, range_member(s, last, to))
        break
      end
      redis.call('HINCRBY', qk .. ':stats', 'sr', -1)
    else
      ids[#ids + 1] = item
      taken = taken + 1
    end
    used = used + 1
  end
  if used > 0 then redis.call('LTRIM', wait, used, -1) end
  return taken
end

-- Keyed jobs, the keys taking turns: each visit takes an equal share of
-- what is left, within the key's max_per_key running jobs. Two rounds, so
-- a key with few jobs leaves its share to the others.
local function take_keyed(ids, want)
  local ring = qk .. ':keys'
  local cap = tonumber(redis.call('HGET', qk .. ':conf', 'max_per_key'))
  local taken = 0
  for _ = 1, 2 do
    local keys = redis.call('LLEN', ring)
    if keys == 0 or taken >= want then break end
    local share = math.ceil((want - taken) / keys)
    for _ = 1, keys do
      if taken >= want then break end
      local key = redis.call('LMOVE', ring, ring, 'LEFT', 'RIGHT')
      local room = math.min(share, want - taken)
      if cap then
        room = math.min(room, cap - tonumber(redis.call('HGET', qk .. ':krun', key) or 0))
      end
      local list = qk .. ':k:' .. key
      local got = take(ids, list, room)
      if got > 0 then
        redis.call('HINCRBY', qk .. ':krun', key, got)
        taken = taken + got
      end
      if redis.call('LLEN', list) == 0 then redis.call('LREM', ring, 1, key) end
    end
  end
  return taken
end

-- 4. Higher priorities first, then the FIFO list and the keyed jobs sharing
--    what is left (so neither starves the other), then lower priorities.
ids = redis.call('ZRANGEBYSCORE', qk .. ':prio', '-inf', '(0', 'LIMIT', 0, max)
if #ids > 0 then bulk('ZREM', qk .. ':prio', ids) end
local taken = #ids
if taken < max and redis.call('EXISTS', qk .. ':keys') == 1 then
  taken = taken + take_wait(math.ceil((max - taken) / 2))
  taken = taken + take_keyed(ids, max - taken)
end
taken = taken + take_wait(max - taken)
if taken < max then
  local low = redis.call('ZPOPMIN', qk .. ':prio', max - taken)
  for i = 1, #low, 2 do ids[#ids + 1] = low[i] end
end

-- 5. Segment ranges taken are leased as one member each; the reply gives
--    per range: S, from, its status bytes (jobs not '0' were cancelled while
--    waiting and are skipped), where its first payload starts, where each
--    ends, the payload bytes, max attempts.
local score = lease_score(now + lease, slot)
local ranges_out = {}
for _, range in ipairs(segs) do
  local s, from, to = range[1], range[2], range[3]
  local key = seg_key(prefix, s)
  local ma = redis.call('HGET', key, 'ma')
  local states = ma and redis.call('GETRANGE', key .. ':s', from, to - 1) or ''
  local _, live = string.gsub(states, '0', '')
  if live > 0 then
    redis.call('ZADD', qk .. ':leased', score, range_member(s, from, to))
    redis.call('HSET', key .. ':l', from, to, '#' .. from, live)
    redis.call('HINCRBY', qk .. ':stats', 'sl', live)
    redis.call('HINCRBY', qk .. ':stats', 'sg', 1)
    redis.call('HINCRBY', qk .. ':stats', 'sw', -live)
    ranges_out[#ranges_out + 1] = s
    ranges_out[#ranges_out + 1] = from
    ranges_out[#ranges_out + 1] = states
    local start, ends, payloads = seg_payloads(key, from, to)
    ranges_out[#ranges_out + 1] = start
    ranges_out[#ranges_out + 1] = ends
    ranges_out[#ranges_out + 1] = payloads
    ranges_out[#ranges_out + 1] = ma
  end
end

if #ids == 0 and #ranges_out == 0 then
  -- Only cancelled jobs were taken: more may wait behind them.
  if #segs > 0 then return {now, {}, {}, {}, ended, {}} end
  local nxt = redis.call('ZRANGE', qk .. ':delayed', 0, 0, 'WITHSCORES')
  return {nxt[2] or '', {}, {}, {}, ended, {}}
end
local envs = hmget(prefix .. ':jobs', ids)
local atts = hmget(prefix .. ':att', ids)
local leased = {}
for i, id in ipairs(ids) do
  -- A job whose envelope is gone (expired) is skipped; Rust skips it too.
  if envs[i] then
    leased[#leased + 1] = score
    leased[#leased + 1] = id
  end
end
bulk('ZADD', qk .. ':leased', leased)
return {'', ids, envs, atts, ended, ranges_out}
