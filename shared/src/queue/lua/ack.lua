-- Records attempt outcomes of one queue's jobs leased to one worker.
-- ARGV: prefix, queue, now_ms, worker, retention_ms, max_backoff_ms,
--   ok_count, then per success: id, result record;
--   then per failure: id, error record
-- Acks for jobs whose lease this worker lost are ignored: they run again.
local prefix, queue, now, worker = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local retention, max_backoff, ok_count = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local qk = prefix .. ':q:' .. queue

local function owned(ids)
  local owners = hmget(qk .. ':owner', ids)
  local mine = {}
  for i, id in ipairs(ids) do
    if owners[i] == worker then mine[id] = true end
  end
  return mine
end

-- Successes, in bulk.
local ok_ids, ok_recs = {}, {}
for i = 0, ok_count - 1 do
  ok_ids[#ok_ids + 1] = ARGV[8 + i * 2]
  ok_recs[#ok_recs + 1] = ARGV[9 + i * 2]
end
if #ok_ids > 0 then
  local mine = owned(ok_ids)
  local done, results, done_at = {}, {}, {}
  for i, id in ipairs(ok_ids) do
    if mine[id] then
      done[#done + 1] = id
      results[#results + 1] = id
      results[#results + 1] = ok_recs[i]
      done_at[#done_at + 1] = now
      done_at[#done_at + 1] = id
    end
  end
  if #done > 0 then
    bulk('ZREM', qk .. ':leased', done)
    bulk('HDEL', qk .. ':owner', done)
    bulk('HSET', prefix .. ':res', results)
    bulk('ZADD', qk .. ':done', done_at)
    redis.call('HINCRBY', qk .. ':stats', 'done', #done)
  end
end

-- Failures, one by one (the rare path).
local fail_ids, fail_recs = {}, {}
for b = 8 + ok_count * 2, #ARGV, 2 do
  fail_ids[#fail_ids + 1] = ARGV[b]
  fail_recs[#fail_recs + 1] = ARGV[b + 1]
end
if #fail_ids > 0 then
  local mine = owned(fail_ids)
  for i, id in ipairs(fail_ids) do
    local env = redis.call('HGET', prefix .. ':jobs', id)
    if mine[id] and env then
      local job = cjson.decode(env)
      redis.call('ZREM', qk .. ':leased', id)
      redis.call('HDEL', qk .. ':owner', id)
      redis.call('HSET', prefix .. ':err', id, fail_recs[i])
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
end

-- Finished jobs older than the retention period are forgotten, a bounded
-- number per call.
local old = redis.call('ZRANGEBYSCORE', qk .. ':done', '-inf', now - retention, 'LIMIT', 0, 500)
if #old > 0 then
  bulk('ZREM', qk .. ':done', old)
  for _, hash in ipairs({'jobs', 'res', 'err', 'att'}) do
    bulk('HDEL', prefix .. ':' .. hash, old)
  end
end
return 0
