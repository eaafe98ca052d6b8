-- Hands back jobs a worker leased but never started, uncounted.
-- ARGV: prefix, queue, worker slot, now_ms, ids...
local prefix, queue, slot, now = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local qk = prefix .. ':q:' .. queue
local released = 0
-- Reverse order, so the head of the wait list keeps their original order.
for i = #ARGV, 5, -1 do
  local id = ARGV[i]
  move_out_if_segment(prefix, id, now, slot)
  local env = redis.call('HGET', prefix .. ':jobs', id)
  if env and held_by(redis.call('ZSCORE', qk .. ':leased', id), slot) then
    redis.call('ZREM', qk .. ':leased', id)
    local job = cjson.decode(env)
    key_done(qk, job.k)
    requeue(prefix, qk, id, job.pr, job.k)
    released = released + 1
  end
end
if released > 0 then redis.call('PUBLISH', prefix .. ':wake', queue) end
return released
