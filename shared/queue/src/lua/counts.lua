-- Live counts of one queue. ARGV: prefix, queue, live_since_ms
-- Returns pending, running, done, failed, dead, workers, cancelled.
local prefix, queue, live_since = ARGV[1], ARGV[2], ARGV[3]
local qk = prefix .. ':q:' .. queue
local stats = redis.call('HMGET', qk .. ':stats', 'done', 'failed', 'sw', 'sr', 'sl', 'sg')
-- Segments (see common.lua): one wait element or lease member covers many jobs.
local function stat(i) return tonumber(stats[i] or 0) end
local keyed = 0
for _, key in ipairs(redis.call('LRANGE', qk .. ':keys', 0, -1)) do
  keyed = keyed + redis.call('LLEN', qk .. ':k:' .. key)
end
return {
  redis.call('LLEN', qk .. ':wait') - stat(4) + stat(3) + redis.call('ZCARD', qk .. ':prio')
    + redis.call('ZCARD', qk .. ':delayed') + keyed,
  redis.call('ZCARD', qk .. ':leased') - stat(6) + stat(5),
  stat(1),
  stat(2),
  redis.call('ZCARD', qk .. ':dead'),
  redis.call('ZCOUNT', qk .. ':workers', live_since, '+inf'),
  redis.call('ZCARD', qk .. ':cancelled'),
}
