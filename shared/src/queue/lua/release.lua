-- Hands back jobs a worker leased but never started, uncounted.
-- ARGV: prefix, worker, now_ms, ids...
local prefix, worker, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local woken = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local jk = prefix .. ':job:' .. id
  local f = redis.call('HMGET', jk, 'queue', 'worker', 'status', 'priority', 'seq')
  if f[1] and f[2] == worker and f[3] == 'running' then
    local qk = prefix .. ':q:' .. f[1]
    redis.call('ZREM', qk .. ':leased', id)
    redis.call('HINCRBY', jk, 'attempts', -1)
    redis.call('HSET', jk, 'status', 'pending', 'worker', '', 'updated_ms', now)
    redis.call('ZADD', qk .. ':pending', (1000 - tonumber(f[4])) * 1099511627776 + tonumber(f[5]), id)
    woken[f[1]] = true
  end
end
for q, _ in pairs(woken) do
  redis.call('PUBLISH', prefix .. ':wake', q)
end
return 0
