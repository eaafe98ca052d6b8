-- Leases due jobs of one queue to a worker.
-- ARGV: prefix, queue, now_ms, max, lease_ms, worker slot
-- Returns {next_due_ms or '', ids, envelopes, attempts so far, ended}, or
-- {'paused', ended}; `ended` lists id, callback URL, attempts of jobs whose
-- last lease expired (now dead) and that asked to be told.
local prefix, queue = ARGV[1], ARGV[2]
local now, max, lease, slot = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local qk = prefix .. ':q:' .. queue

-- 1. Leases that expired: the worker died or stalled. Bounded per call, so
--    any backlog is worked off over several fetches, never in one reply.
local ended = {}
local expired = redis.call('ZRANGEBYSCORE', qk .. ':leased', '-inf', lease_score(now, SLOTS - 1),
  'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', qk .. ':leased', id)
  local env = redis.call('HGET', prefix .. ':jobs', id)
  if env then
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
local ids = redis.call('ZRANGEBYSCORE', qk .. ':prio', '-inf', '(0', 'LIMIT', 0, max)
if #ids > 0 then bulk('ZREM', qk .. ':prio', ids) end
if #ids < max and redis.call('EXISTS', qk .. ':keys') == 1 then
  take(ids, qk .. ':wait', math.ceil((max - #ids) / 2))
  take_keyed(ids, max - #ids)
end
take(ids, qk .. ':wait', max - #ids)
if #ids < max then
  local low = redis.call('ZPOPMIN', qk .. ':prio', max - #ids)
  for i = 1, #low, 2 do ids[#ids + 1] = low[i] end
end

if #ids == 0 then
  local nxt = redis.call('ZRANGE', qk .. ':delayed', 0, 0, 'WITHSCORES')
  return {nxt[2] or '', {}, {}, {}, ended}
end
local envs = hmget(prefix .. ':jobs', ids)
local atts = hmget(prefix .. ':att', ids)
local leased = {}
local score = lease_score(now + lease, slot)
for i, id in ipairs(ids) do
  -- A job whose envelope is gone (expired) is skipped; Rust skips it too.
  if envs[i] then
    leased[#leased + 1] = score
    leased[#leased + 1] = id
  end
end
bulk('ZADD', qk .. ':leased', leased)
return {'', ids, envs, atts, ended}
