-- The common push, with no per-job work in Lua: one queue, priority 0, no
-- delay, no idempotency key.
-- ARGV: prefix, queue, count, then count ids, then count pairs: id, envelope.
local prefix, queue, n = ARGV[1], ARGV[2], tonumber(ARGV[3])
local qk = prefix .. ':q:' .. queue
bulk_argv('HSET', prefix .. ':jobs', 4 + n, 3 + n * 3)
bulk_argv('RPUSH', qk .. ':wait', 4, 3 + n)
redis.call('SADD', prefix .. ':queues', queue)
redis.call('PUBLISH', prefix .. ':wake', queue)
return n
