-- Records attempt outcomes of one queue's jobs leased to one worker.
-- ARGV: prefix, queue, now_ms, worker slot, retention_ms, max_backoff_ms,
--   ok_count, the ok ids joined by commas, then ok_count ids,
--   then ok_count pairs: id, result record,
--   then per failure: id, error record, retry ('' = the backoff, 'never',
--   or a delay in ms).
-- Returns the ids whose lease this worker no longer held (ignored).
-- The caller lays the arguments out as the bulk commands need them, so the
-- common path copies nothing in Lua. Acks for jobs whose lease this worker
-- lost are ignored: those jobs run again.
local prefix, queue, now, slot = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local retention, max_backoff, ok_count = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local joined = ARGV[8]
local qk = prefix .. ':q:' .. queue
local ids_at = 9
local lost_ids = {}
local conf = redis.call('HMGET', qk .. ':conf', 'keep_done', 'keep_dead', 'remove')
if conf[1] then retention = tonumber(conf[1]) end
local keep_dead, remove_done = tonumber(conf[2]), conf[3] == '1'
-- Keyed jobs running: their keys' running counts go down as they end.
local keyed = redis.call('EXISTS', qk .. ':krun') == 1
local pairs_at, fails_at = ids_at + ok_count, ids_at + ok_count * 3

-- Successes, in bulk: check every lease at once; usually all still hold,
-- and then the arguments go to the commands as they are.
if ok_count > 0 then
  local held = {}
  for i = ids_at, pairs_at - 1, CHUNK do
    local part = redis.call('ZMSCORE', qk .. ':leased', unpack(ARGV, i, math.min(i + CHUNK - 1, pairs_at - 1)))
    for _, v in ipairs(part) do held[#held + 1] = held_by(v, slot) end
  end
  local lost = 0
  for _, mine in ipairs(held) do
    if not mine then lost = lost + 1 end
  end
  if keyed then
    local ended = {}
    for i, mine in ipairs(held) do
      if mine then ended[#ended + 1] = ARGV[ids_at + i - 1] end
    end
    for _, env in ipairs(hmget(prefix .. ':jobs', ended)) do
      if env then key_done(qk, cjson.decode(env).k) end
    end
  end
  if lost == 0 and remove_done then
    bulk_argv('ZREM', qk .. ':leased', ids_at, pairs_at - 1)
    for _, hash in ipairs({'jobs', 'att', 'err', 'prog'}) do
      bulk_argv('HDEL', prefix .. ':' .. hash, ids_at, pairs_at - 1)
    end
  elseif lost == 0 then
    bulk_argv('ZREM', qk .. ':leased', ids_at, pairs_at - 1)
    bulk_argv('HSET', prefix .. ':res', pairs_at, fails_at - 1)
    redis.call('RPUSH', qk .. ':done', joined)
  else
    local done = {}
    for i, mine in ipairs(held) do
      local id = ARGV[ids_at + i - 1]
      if mine then
        redis.call('ZREM', qk .. ':leased', id)
        if remove_done then
          for _, hash in ipairs({'jobs', 'att', 'err', 'prog'}) do
            redis.call('HDEL', prefix .. ':' .. hash, id)
          end
        else
          redis.call('HSET', prefix .. ':res', id, ARGV[pairs_at + (i - 1) * 2 + 1])
          done[#done + 1] = id
        end
      else
        lost_ids[#lost_ids + 1] = id
      end
    end
    if #done > 0 then redis.call('RPUSH', qk .. ':done', table.concat(done, ',')) end
  end
  if ok_count > lost then
    redis.call('HINCRBY', qk .. ':stats', 'done', ok_count - lost)
  end
end

-- Failures, one by one (the rare path).
for b = fails_at, #ARGV, 3 do
  local id, record, retry = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  move_out_if_segment(prefix, id, now, slot)
  local env = redis.call('HGET', prefix .. ':jobs', id)
  if not (env and held_by(redis.call('ZSCORE', qk .. ':leased', id), slot)) then
    lost_ids[#lost_ids + 1] = id
  else
    local job = cjson.decode(env)
    key_done(qk, job.k)
    redis.call('ZREM', qk .. ':leased', id)
    redis.call('HSET', prefix .. ':err', id, record)
    redis.call('HINCRBY', qk .. ':stats', 'failed', 1)
    local attempts = redis.call('HINCRBY', prefix .. ':att', id, 1)
    if attempts >= job.ma or retry == 'never' then
      redis.call('ZADD', qk .. ':dead', now, id)
    else
      local delay = math.min(job.b * 2 ^ (attempts - 1), max_backoff)
      if retry ~= '' then delay = math.min(tonumber(retry), max_backoff) end
      redis.call('ZADD', qk .. ':delayed', now + delay, delayed_member(id, job.pr, job.k))
    end
  end
end

forget_old_done(prefix, qk, now, retention)

-- Dead and cancelled jobs past the queue's keep_dead_ms, if it has one.
if keep_dead then
  for _, set in ipairs({'dead', 'cancelled'}) do
    local old = redis.call('ZRANGEBYSCORE', qk .. ':' .. set, '-inf', now - keep_dead, 'LIMIT', 0, 1000)
    if #old > 0 then
      bulk('ZREM', qk .. ':' .. set, old)
      forget_jobs(prefix, old)
    end
  end
end
return lost_ids
