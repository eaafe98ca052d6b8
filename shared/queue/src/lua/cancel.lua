-- Cancels one job. ARGV: prefix, id, now_ms, error record
-- Returns {'cancelled', status it had} or {'final', its status} or {'not_found'}.
local prefix, id, now, record = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local env = redis.call('HGET', prefix .. ':jobs', id)

local function cancelled(qk, had)
  redis.call('ZADD', qk .. ':cancelled', now, id)
  redis.call('HSET', prefix .. ':err', id, record)
  redis.call('HINCRBY', qk .. ':stats', 'cancelled', 1)
  return {'cancelled', had}
end

-- A job still in its segment: running, it moves out and is cancelled as
-- any running job; waiting, it is marked out (fetches skip it) and
-- recorded as cancelled here.
if not env and is_seg_id(id) then
  local s, i, meta, key = seg_find(prefix, id)
  if not s then return {'not_found'} end
  local qk = prefix .. ':q:' .. meta[1]
  local state = redis.call('GETRANGE', key .. ':s', i, i)
  if state == '1' and not keeps_no_done(qk) then return {'final', 'done'} end
  if state ~= '0' then return {'not_found'} end
  if not move_out_running(prefix, id, now) then
    seg_move_out(prefix, key, meta, id, i)
    redis.call('HINCRBY', qk .. ':stats', 'sw', -1)
    seg_ended(prefix, qk, s, 1, now)
    return cancelled(qk, 'pending')
  end
  env = redis.call('HGET', prefix .. ':jobs', id)
end
if not env then return {'not_found'} end
local job = cjson.decode(env)
local qk = prefix .. ':q:' .. job.q
if redis.call('HEXISTS', prefix .. ':res', id) == 1 then return {'final', 'done'} end
if redis.call('ZSCORE', qk .. ':cancelled', id) then return {'final', 'cancelled'} end
if redis.call('ZSCORE', qk .. ':dead', id) then return {'final', 'dead'} end
local had
if redis.call('ZREM', qk .. ':leased', id) == 1 then
  -- Its worker learns on its next heartbeat; its ack is then ignored.
  had = 'running'
  key_done(qk, job.k)
elseif redis.call('ZREM', qk .. ':prio', id) == 1
    or redis.call('ZREM', qk .. ':delayed', delayed_member(id, job.pr, job.k)) == 1
    or redis.call('LREM', qk .. ':wait', 1, id) == 1
    or (job.k and redis.call('LREM', qk .. ':k:' .. job.k, 1, id) == 1) then
  had = 'pending'
  if redis.call('HEXISTS', prefix .. ':err', id) == 1 then had = 'failed' end
  if job.k and redis.call('LLEN', qk .. ':k:' .. job.k) == 0 then
    redis.call('LREM', qk .. ':keys', 1, job.k)
  end
else
  -- Between two states (another script holds it only within one call, so
  -- this is a job of a queue whose lists were purged): nothing to stop.
  return {'not_found'}
end
return cancelled(qk, had)
