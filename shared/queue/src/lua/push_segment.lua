-- A plain batch as one segment (see common.lua): its payloads in one
-- string, where each ends in another, one status byte per job, and a single
-- wait list element for all of them.
-- ARGV: prefix, queue, S, max_attempts, backoff_ms, now_ms, payloads, ends.
local prefix, queue, s = ARGV[1], ARGV[2], ARGV[3]
local n = #ARGV[8] / 4
local qk = prefix .. ':q:' .. queue
local key = seg_key(prefix, s)
redis.call('HSET', key, 'q', queue, 'n', n, 'ma', ARGV[4], 'b', ARGV[5], 'c', ARGV[6], 'left', n)
redis.call('SET', key .. ':p', ARGV[7])
redis.call('SET', key .. ':o', ARGV[8])
redis.call('SET', key .. ':s', string.rep('0', n))
redis.call('RPUSH', qk .. ':wait', range_member(s, 0, n))
redis.call('HINCRBY', qk .. ':stats', 'sw', n)
redis.call('HINCRBY', qk .. ':stats', 'sr', 1)
redis.call('SADD', prefix .. ':queues', queue)
redis.call('PUBLISH', prefix .. ':wake', queue)
return n
