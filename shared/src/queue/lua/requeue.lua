-- Puts dead jobs back to pending with their attempts reset.
-- ARGV: prefix, queue, now_ms, max, ids... (no ids: the oldest `max` dead jobs)
-- Returns the ids requeued (ids that are not dead jobs of this queue are skipped).
local prefix, queue, now, max = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local qk = prefix .. ':q:' .. queue
local ids = {}
if #ARGV > 4 then
  for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', qk .. ':dead', 0, max - 1)
end
local out = {}
for _, id in ipairs(ids) do
  local jk = prefix .. ':job:' .. id
  local f = redis.call('HMGET', jk, 'queue', 'status', 'priority', 'seq')
  if f[1] == queue and f[2] == 'dead' then
    redis.call('ZREM', qk .. ':dead', id)
    redis.call('HSET', jk, 'status', 'pending', 'attempts', 0, 'updated_ms', now)
    redis.call('ZADD', qk .. ':pending', (1000 - tonumber(f[3])) * 1099511627776 + tonumber(f[4]), id)
    out[#out + 1] = id
  end
end
if #out > 0 then
  redis.call('PUBLISH', prefix .. ':wake', queue)
end
return out
