-- Records attempt outcomes of one queue's jobs leased to one worker.
-- ARGV: prefix, queue, now_ms, worker, retention_ms, max_backoff_ms, ok_count,
--   then ok_count lease members ("id:worker"),
--   then ok_count pairs: id, result record,
--   then per failure: id, error record.
-- The caller lays the arguments out as the bulk commands need them, so the
-- common path copies nothing in Lua. Acks for jobs whose lease this worker
-- lost are ignored: those jobs run again.
local prefix, queue, now, worker = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local retention, max_backoff, ok_count = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local qk = prefix .. ':q:' .. queue
local members_at, pairs_at, fails_at = 8, 8 + ok_count, 8 + ok_count * 3

-- Successes, in bulk: check every lease at once; usually all still hold.
if ok_count > 0 then
  local members = {unpack(ARGV, members_at, pairs_at - 1)}
  local held = zmscore(qk .. ':leased', members)
  local all_held = true
  for _, deadline in ipairs(held) do
    if not deadline then all_held = false break end
  end
  local done_ids, results = {}, {}
  if all_held then
    for i = pairs_at, fails_at - 1, 2 do done_ids[#done_ids + 1] = ARGV[i] end
    results = {unpack(ARGV, pairs_at, fails_at - 1)}
  else
    for i, deadline in ipairs(held) do
      if deadline then
        local at = pairs_at + (i - 1) * 2
        done_ids[#done_ids + 1] = ARGV[at]
        results[#results + 1] = ARGV[at]
        results[#results + 1] = ARGV[at + 1]
      end
    end
  end
  if #done_ids > 0 then
    bulk('ZREM', qk .. ':leased', members)
    bulk('HSET', prefix .. ':res', results)
    bulk('RPUSH', qk .. ':done', done_ids)
    redis.call('HINCRBY', qk .. ':stats', 'done', #done_ids)
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
