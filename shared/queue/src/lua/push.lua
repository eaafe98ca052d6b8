-- Enqueues a batch of jobs atomically.
-- ARGV: prefix, now_ms, idempotency_ttl_s, count, then 7 fields per job:
--   id, queue, envelope JSON, priority, idempotency_key ('' = none), delay_ms,
--   concurrency key ('' = none)
-- Returns id, duplicate flag (0|1) per job.
local prefix, now = ARGV[1], tonumber(ARGV[2])
local idem_ttl, n = tonumber(ARGV[3]), tonumber(ARGV[4])
local out, jobs = {}, {}
local per_queue = {}
local function lists(queue)
  local l = per_queue[queue]
  if not l then
    l = { wait = {}, prio = {}, delayed = {} }
    per_queue[queue] = l
  end
  return l
end
local seq = redis.call('INCRBY', prefix .. ':seq', n) - n
for i = 0, n - 1 do
  local b = 5 + i * 7
  local id, queue, env = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local priority, idem, delay = tonumber(ARGV[b + 3]), ARGV[b + 4], tonumber(ARGV[b + 5])
  local key = ARGV[b + 6]
  if key == '' then key = nil end
  local prior = false
  if idem ~= '' then
    local key = prefix .. ':idem:' .. queue .. ':' .. idem
    prior = redis.call('GET', key)
    if not prior then redis.call('SET', key, id, 'EX', idem_ttl) end
  end
  if prior then
    out[#out + 1] = prior
    out[#out + 1] = 1
  else
    jobs[#jobs + 1] = id
    jobs[#jobs + 1] = env
    local l = lists(queue)
    if delay > 0 then
      l.delayed[#l.delayed + 1] = now + delay
      l.delayed[#l.delayed + 1] = delayed_member(id, priority, key)
    elseif key then
      push_keyed(prefix .. ':q:' .. queue, key, id, false)
      l.keyed = true
    elseif priority == 0 then
      l.wait[#l.wait + 1] = id
    else
      l.prio[#l.prio + 1] = -priority * PRIO_SCALE + seq + i
      l.prio[#l.prio + 1] = id
    end
    out[#out + 1] = id
    out[#out + 1] = 0
  end
end
bulk('HSET', prefix .. ':jobs', jobs)
for queue, l in pairs(per_queue) do
  local qk = prefix .. ':q:' .. queue
  bulk('RPUSH', qk .. ':wait', l.wait)
  bulk('ZADD', qk .. ':prio', l.prio)
  bulk('ZADD', qk .. ':delayed', l.delayed)
  redis.call('SADD', prefix .. ':queues', queue)
  if #l.wait > 0 or #l.prio > 0 or l.keyed then
    redis.call('PUBLISH', prefix .. ':wake', queue)
  end
end
return out
