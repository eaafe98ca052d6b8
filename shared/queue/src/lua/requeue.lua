-- Puts dead jobs back to pending with their attempts reset.
-- ARGV: prefix, queue, max, ids... (no ids: the oldest `max` dead jobs)
-- Returns the ids requeued (ids that are not dead jobs of this queue are skipped).
local prefix, queue, max = ARGV[1], ARGV[2], tonumber(ARGV[3])
local qk = prefix .. ':q:' .. queue
local ids = {}
if #ARGV > 3 then
  for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
else
  ids = redis.call('ZRANGE', qk .. ':dead', 0, max - 1)
end
local out = {}
for _, id in ipairs(ids) do
  local env = redis.call('HGET', prefix .. ':jobs', id)
  if env and redis.call('ZREM', qk .. ':dead', id) == 1 then
    redis.call('HDEL', prefix .. ':att', id)
    redis.call('HDEL', prefix .. ':err', id)
    local job = cjson.decode(env)
    requeue(prefix, qk, id, job.pr, job.k)
    out[#out + 1] = id
  end
end
if #out > 0 then redis.call('PUBLISH', prefix .. ':wake', queue) end
return out
