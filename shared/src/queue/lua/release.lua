-- Hands back jobs a worker leased but never started, uncounted.
-- ARGV: prefix, queue, worker, ids...
local prefix, queue, worker = ARGV[1], ARGV[2], ARGV[3]
local qk = prefix .. ':q:' .. queue
local ids = {}
for i = 4, #ARGV do ids[#ids + 1] = ARGV[i] end
local owners = hmget(qk .. ':owner', ids)
local released = 0
-- Reverse order, so the head of the wait list keeps their original order.
for i = #ids, 1, -1 do
  local id = ids[i]
  local env = redis.call('HGET', prefix .. ':jobs', id)
  if owners[i] == worker and env then
    redis.call('ZREM', qk .. ':leased', id)
    redis.call('HDEL', qk .. ':owner', id)
    requeue(prefix, qk, id, cjson.decode(env).pr)
    released = released + 1
  end
end
if released > 0 then redis.call('PUBLISH', prefix .. ':wake', queue) end
return released
