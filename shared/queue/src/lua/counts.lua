-- Live counts of one queue. ARGV: prefix, queue, live_since_ms
-- Returns pending, running, done, failed, dead, workers, cancelled.
local prefix, queue, live_since = ARGV[1], ARGV[2], ARGV[3]
local qk = prefix .. ':q:' .. queue
local stats = redis.call('HMGET', qk .. ':stats', 'done', 'failed')
local keyed = 0
for _, key in ipairs(redis.call('LRANGE', qk .. ':keys', 0, -1)) do
  keyed = keyed + redis.call('LLEN', qk .. ':k:' .. key)
end
return {
  redis.call('LLEN', qk .. ':wait') + redis.call('ZCARD', qk .. ':prio')
    + redis.call('ZCARD', qk .. ':delayed') + keyed,
  redis.call('ZCARD', qk .. ':leased'),
  tonumber(stats[1] or 0),
  tonumber(stats[2] or 0),
  redis.call('ZCARD', qk .. ':dead'),
  redis.call('ZCOUNT', qk .. ':workers', live_since, '+inf'),
  redis.call('ZCARD', qk .. ':cancelled'),
}
