-- Enqueues a batch of jobs atomically.
-- ARGV: prefix, now_ms, idempotency_ttl_s, count, then 8 fields per job:
--   id, queue, payload, priority, max_attempts, backoff_ms, idempotency_key ('' = none), delay_ms
-- Returns id, duplicate flag (0|1) per job.
local prefix = ARGV[1]
local now = tonumber(ARGV[2])
local idem_ttl = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local out = {}
local woken = {}
local queues = {}
-- Sequence numbers keep FIFO order within a priority level.
local seq_base = redis.call('INCRBY', prefix .. ':seq', n) - n
for i = 0, n - 1 do
  local b = 5 + i * 8
  local id, queue, payload = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local priority = tonumber(ARGV[b + 3])
  local idem = ARGV[b + 6]
  local delay = tonumber(ARGV[b + 7])
  local prior = false
  if idem ~= '' then
    local key = prefix .. ':idem:' .. queue .. ':' .. idem
    prior = redis.call('GET', key)
    if not prior then
      redis.call('SET', key, id, 'EX', idem_ttl)
    end
  end
  if prior then
    out[#out + 1] = prior
    out[#out + 1] = 1
  else
    local seq = seq_base + i
    local qk = prefix .. ':q:' .. queue
    redis.call('HSET', prefix .. ':job:' .. id,
      'queue', queue, 'payload', payload, 'priority', priority, 'seq', seq,
      'attempts', 0, 'max_attempts', ARGV[b + 4], 'backoff_ms', ARGV[b + 5],
      'status', 'pending', 'created_ms', now, 'updated_ms', now)
    if delay > 0 then
      redis.call('ZADD', qk .. ':delayed', now + delay, id)
    else
      -- Lower score first: priority first, then sequence.
      redis.call('ZADD', qk .. ':pending', (1000 - priority) * 1099511627776 + seq, id)
      woken[queue] = true
    end
    queues[queue] = true
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
for q, _ in pairs(queues) do
  redis.call('SADD', prefix .. ':queues', q)
end
for q, _ in pairs(woken) do
  redis.call('PUBLISH', prefix .. ':wake', q)
end
return out
