-- Records attempt outcomes.
-- ARGV: prefix, now_ms, worker, retention_ms, max_backoff_ms, count,
--   then 3 fields per ack: id, ok ('1' | '0'), result JSON or error text
-- Returns how many acks applied (the rest lost their lease and will rerun).
local prefix, now, worker = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local retention, max_backoff, n = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local applied = 0
for i = 0, n - 1 do
  local b = 7 + i * 3
  local id, ok, body = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local jk = prefix .. ':job:' .. id
  local f = redis.call('HMGET', jk, 'queue', 'worker', 'status', 'attempts', 'max_attempts', 'backoff_ms')
  if f[1] and f[2] == worker and f[3] == 'running' then
    local qk = prefix .. ':q:' .. f[1]
    redis.call('ZREM', qk .. ':leased', id)
    if ok == '1' then
      redis.call('HSET', jk, 'status', 'done', 'result', body, 'worker', '', 'updated_ms', now)
      redis.call('HINCRBY', qk .. ':stats', 'done', 1)
      redis.call('PEXPIRE', jk, retention)
    else
      local attempts, max = tonumber(f[4]), tonumber(f[5])
      redis.call('HINCRBY', qk .. ':stats', 'failed', 1)
      if attempts >= max then
        redis.call('HSET', jk, 'status', 'dead', 'error', body, 'worker', '', 'updated_ms', now)
        redis.call('ZADD', qk .. ':dead', now, id)
      else
        local delay = math.min(tonumber(f[6]) * 2 ^ (attempts - 1), max_backoff)
        redis.call('HSET', jk, 'status', 'failed', 'error', body, 'worker', '', 'updated_ms', now)
        redis.call('ZADD', qk .. ':delayed', now + delay, id)
      end
    end
    applied = applied + 1
  end
end
return applied
