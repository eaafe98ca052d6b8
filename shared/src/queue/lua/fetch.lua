-- Leases due jobs of one queue to a worker.
-- ARGV: prefix, queue, now_ms, max, lease_ms, worker
-- Returns {next_due_ms or '', id, payload, attempt, max_attempts, ...}, or {'paused'}.
local prefix, queue = ARGV[1], ARGV[2]
local now, max, lease, worker = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local qk = prefix .. ':q:' .. queue

local function requeue(id)
  local jk = prefix .. ':job:' .. id
  local f = redis.call('HMGET', jk, 'priority', 'seq')
  if f[1] then
    redis.call('ZADD', qk .. ':pending', (1000 - tonumber(f[1])) * 1099511627776 + tonumber(f[2]), id)
  end
end

-- 1. Leases that expired: the worker died or stalled. Bounded per call, so a
--    large backlog is worked off over several fetches, never in one reply.
local expired = redis.call('ZRANGEBYSCORE', qk .. ':leased', '-inf', now, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  redis.call('ZREM', qk .. ':leased', id)
  local jk = prefix .. ':job:' .. id
  local f = redis.call('HMGET', jk, 'attempts', 'max_attempts')
  if f[1] then
    if tonumber(f[1]) >= tonumber(f[2]) then
      redis.call('HSET', jk, 'status', 'dead', 'worker', '', 'updated_ms', now,
        'error', 'lease expired: the worker stopped during the last attempt')
      redis.call('ZADD', qk .. ':dead', now, id)
    else
      redis.call('HSET', jk, 'status', 'pending', 'worker', '', 'updated_ms', now)
      requeue(id)
    end
  end
end

-- 2. Delayed jobs and retries that are due.
local due = redis.call('ZRANGEBYSCORE', qk .. ':delayed', '-inf', now, 'LIMIT', 0, 10000)
for _, id in ipairs(due) do
  redis.call('ZREM', qk .. ':delayed', id)
  requeue(id)
end

-- 3. A paused queue keeps its jobs.
if redis.call('SISMEMBER', prefix .. ':paused', queue) == 1 then
  return {'paused'}
end

local popped = redis.call('ZPOPMIN', qk .. ':pending', max)
local out = {''}
local deadline = now + lease
for i = 1, #popped, 2 do
  local id = popped[i]
  local jk = prefix .. ':job:' .. id
  local f = redis.call('HMGET', jk, 'payload', 'max_attempts')
  if f[1] then
    local attempt = redis.call('HINCRBY', jk, 'attempts', 1)
    redis.call('HSET', jk, 'status', 'running', 'worker', worker, 'updated_ms', now)
    redis.call('ZADD', qk .. ':leased', deadline, id)
    out[#out + 1] = id
    out[#out + 1] = f[1]
    out[#out + 1] = attempt
    out[#out + 1] = f[2]
  end
end
if #out == 1 then
  local nxt = redis.call('ZRANGE', qk .. ':delayed', 0, 0, 'WITHSCORES')
  if #nxt > 0 then
    out[1] = nxt[2]
  end
end
return out
