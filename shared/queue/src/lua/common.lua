-- Shared helpers, prepended to every script.
-- Keys under prefix P (per queue q):
--   P:jobs       hash  id -> envelope JSON {q, p, pr, ma, b, c}
--   P:att        hash  id -> attempts that ended without success
--   P:res        hash  id -> {"a":attempt,"t":done_ms,"r":result} once done
--   P:err        hash  id -> {"e":error,"t":ms} after a failed attempt
--   P:q:q:wait   list  ids of priority 0, FIFO
--   P:q:q:prio   zset  ids of other priorities, score -priority*2^40 + seq
--   P:q:q:delayed zset "id", "id|priority" or "id#key" by run-at ms
--   P:q:q:k:KEY  list  ids of one concurrency key, FIFO (priority ignored)
--   P:q:q:keys   list  keys with waiting jobs, rotated by fetches
--   P:q:q:krun   hash  key -> running jobs
--   P:q:q:leased zset  ids by deadline_ms * 1024 + the holder's slot (a
--                      number 0..1023 derived from the worker's name), so one
--                      score says both when a lease ends and who holds it
--   P:q:q:done   list  comma-joined ids per acknowledgement batch, in
--                      finishing order, trimmed after the retention
--   P:q:q:dead   zset  ids by time;  P:q:q:stats hash done, failed, cancelled
--   P:q:q:cancelled zset ids by time
--   P:q:q:conf   hash  keep_done, keep_dead (ms), remove ('1'), max_per_key
--   P:prog       hash  id -> {"f":fraction,"m":message,"t":ms,"l":[log lines]}
local CHUNK = 1000
local PRIO_SCALE = 1099511627776

-- Calls a variadic command over `items` in chunks (Lua's unpack is bounded).
local function bulk(cmd, key, items, head)
  for i = 1, #items, CHUNK do
    local last = math.min(i + CHUNK - 1, #items)
    if head then
      redis.call(cmd, key, head, unpack(items, i, last))
    else
      redis.call(cmd, key, unpack(items, i, last))
    end
  end
end

-- HMGET over many fields, chunked; returns one value (or false) per field.
local function hmget(key, fields)
  local out = {}
  for i = 1, #fields, CHUNK do
    local part = redis.call('HMGET', key, unpack(fields, i, math.min(i + CHUNK - 1, #fields)))
    for _, v in ipairs(part) do out[#out + 1] = v end
  end
  return out
end

-- Jobs with a concurrency key wait in a FIFO list per key; the ring lists
-- the keys that have waiting jobs (a key is in it exactly while its list
-- is not empty), and krun counts each key's running jobs.
local function push_keyed(qk, key, id, at_head)
  local list = qk .. ':k:' .. key
  local n = redis.call(at_head and 'LPUSH' or 'RPUSH', list, id)
  if n == 1 then redis.call('RPUSH', qk .. ':keys', key) end
end

-- One running job of `key` ended (no-op without a key).
local function key_done(qk, key)
  if key and redis.call('HINCRBY', qk .. ':krun', key, -1) <= 0 then
    redis.call('HDEL', qk .. ':krun', key)
  end
end

-- Makes a job runnable again: at the head of the wait list (it is older
-- than anything behind it), of its key's list, or in the priority set.
local function requeue(prefix, qk, id, priority, key)
  if key then
    push_keyed(qk, key, id, true)
  elseif priority == 0 then
    redis.call('LPUSH', qk .. ':wait', id)
  else
    local seq = redis.call('INCR', prefix .. ':seq')
    redis.call('ZADD', qk .. ':prio', -priority * PRIO_SCALE + seq, id)
  end
end

-- A delayed job's member: "id", "id|priority", or "id#key" for a keyed job.
local function delayed_member(id, priority, key)
  if key then return id .. '#' .. key end
  if priority == 0 then return id end
  return id .. '|' .. priority
end

local function parse_delayed(member)
  local hash = string.find(member, '#', 1, true)
  if hash then return string.sub(member, 1, hash - 1), 0, string.sub(member, hash + 1) end
  local bar = string.find(member, '|', 1, true)
  if not bar then return member, 0, nil end
  return string.sub(member, 1, bar - 1), tonumber(string.sub(member, bar + 1)), nil
end

local SLOTS = 1024

local function lease_score(deadline, slot)
  return deadline * SLOTS + slot
end

-- Whether a lease score (string or false) is held by `slot`.
local function held_by(score, slot)
  return score and math.fmod(tonumber(score), SLOTS) == slot
end

-- Calls a variadic command over ARGV[from..to] in chunks, copying nothing.
local function bulk_argv(cmd, key, from, to)
  for i = from, to, CHUNK do
    redis.call(cmd, key, unpack(ARGV, i, math.min(i + CHUNK - 1, to)))
  end
end
