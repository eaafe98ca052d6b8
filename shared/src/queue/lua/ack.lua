-- Records attempt outcomes of one queue's jobs leased to one worker.
-- ARGV: prefix, queue, now_ms, worker, retention_ms, max_backoff_ms, ok_count,
--   then ok_count lease members ("id:worker"), then ok_count ids,
--   then ok_count pairs: id, result record,
--   then per failure: id, error record.
-- The caller lays the arguments out as the bulk commands need them, so the
-- common path copies nothing in Lua. Acks for jobs whose lease this worker
-- lost are ignored: those jobs run again.
local prefix, queue, now, worker = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local retention, max_backoff, ok_count = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local qk = prefix .. ':q:' .. queue
local members_at, ids_at = 8, 8 + ok_count
local pairs_at, fails_at = 8 + ok_count * 2, 8 + ok_count * 4

-- Successes, in bulk: check every lease at once; usually all still hold,
-- and then the arguments go to the commands as they are.
if ok_count > 0 then
  local held = {}
  for i = members_at, ids_at - 1, CHUNK do
    local part = redis.call('ZMSCORE', qk .. ':leased', unpack(ARGV, i, math.min(i + CHUNK - 1, ids_at - 1)))
    for _, v in ipairs(part) do held[#held + 1] = v end
  end
  local lost = 0
  for _, deadline in ipairs(held) do
    if not deadline then lost = lost + 1 end
  end
  if lost == 0 then
    bulk_argv('ZREM', qk .. ':leased', members_at, ids_at - 1)
    bulk_argv('RPUSH', qk .. ':done', ids_at, pairs_at - 1)
    bulk_argv('HSET', prefix .. ':res', pairs_at, fails_at - 1)
  else
    for i, deadline in ipairs(held) do
      if deadline then
        local id = ARGV[ids_at + i - 1]
        redis.call('ZREM', qk .. ':leased', ARGV[members_at + i - 1])
        redis.call('RPUSH', qk .. ':done', id)
        redis.call('HSET', prefix .. ':res', id, ARGV[pairs_at + (i - 1) * 2 + 1])
      end
    end
  end
  if ok_count > lost then
    redis.call('HINCRBY', qk .. ':stats', 'done', ok_count - lost)
  end
end

-- Failures, one by one (the rare path).
for b = fails_at, #ARGV, 2 do
  local id, record = ARGV[b], ARGV[b + 1]
  local env = redis.call('HGET', prefix .. ':jobs', id)
  if env and redis.call('ZREM', qk .. ':leased', id .. ':' .. worker) == 1 then
    local job = cjson.decode(env)
    redis.call('HSET', prefix .. ':err', id, record)
    redis.call('HINCRBY', qk .. ':stats', 'failed', 1)
    local attempts = redis.call('HINCRBY', prefix .. ':att', id, 1)
    if attempts >= job.ma then
      redis.call('ZADD', qk .. ':dead', now, id)
    else
      local delay = math.min(job.b * 2 ^ (attempts - 1), max_backoff)
      redis.call('ZADD', qk .. ':delayed', now + delay, delayed_member(id, job.pr))
    end
  end
end

-- Finished jobs older than the retention period are forgotten, a bounded
-- number per call (the list is in finishing order).
local old = {}
for _, id in ipairs(redis.call('LRANGE', qk .. ':done', 0, 499)) do
  local record = redis.call('HGET', prefix .. ':res', id)
  if record and cjson.decode(record).t > now - retention then break end
  old[#old + 1] = id
end
if #old > 0 then
  redis.call('LTRIM', qk .. ':done', #old, -1)
  for _, hash in ipairs({'jobs', 'res', 'err', 'att'}) do
    bulk('HDEL', prefix .. ':' .. hash, old)
  end
end
return 0
