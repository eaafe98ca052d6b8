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

-- Segments: a plain batch (one queue, priority 0, no delay, key or
-- idempotency key, the same attempts and backoff) is stored as a whole, so
-- its jobs cost Redis their payload bytes, an offset and a status byte, not
-- a hash field, a list entry, lease members and a result field each, and no
-- script step per job.
--   P:seg:S     hash   q, n, ma, b, c (created ms), left (jobs neither done
--                      nor moved out)
--   P:seg:S:p   string the payloads' JSON, one after the other
--   P:seg:S:o   string where each payload ends in it: 4 bytes (big-endian)
--                      per job, so a range's payloads are two GETRANGEs
--   P:seg:S:s   string one byte per job: '0' waiting or running, '1' done,
--                      'x' moved out to the per-job structures
--   P:seg:S:l   hash   live leases: from -> to, '#'..from -> jobs of it
--                      still running
--   P:seg:S:r   hash   index -> result record, for results that are not null
--   P:seg:S:d   string when each job was done: ms after c, 4 bytes
--                      (big-endian) per job, written a run at a time
-- S is the first 31 characters of its jobs' ids (UUIDv8); the last five hex
-- digits are the job's index. '@S:from:to' is both a wait list element (jobs
-- from..to-1 waiting) and a lease member (those jobs leased together).
-- qk:stats counts sw (segment jobs waiting), sr (segment elements in the
-- wait list), sl (segment jobs leased), sg (segment lease members), so
-- counts stay exact. Any rare event (failure, expiry, release, cancel,
-- progress) first moves the job out to the per-job structures, where the
-- per-job code handles it.
local function seg_key(prefix, s) return prefix .. ':seg:' .. s end

local function is_seg_id(id)
  return #id == 36 and string.sub(id, 15, 15) == '8'
end

local function seg_of(id)
  return string.sub(id, 1, 31), tonumber(string.sub(id, 32), 16)
end

local function seg_id(s, i) return s .. string.format('%05x', i) end

local function range_member(s, from, to) return '@' .. s .. ':' .. from .. ':' .. to end

local function parse_range(member)
  local s, from, to = string.match(member, '^@([^:]+):(%d+):(%d+)$')
  return s, tonumber(from), tonumber(to)
end

-- q, n, ma, b, c of a segment, or nil.
local function seg_meta(prefix, s)
  local meta = redis.call('HMGET', seg_key(prefix, s), 'q', 'n', 'ma', 'b', 'c')
  if not meta[1] then return nil end
  return meta
end

-- A segment job: S, index, meta, segment key; nil if there is no such job.
local function seg_find(prefix, id)
  local s, i = seg_of(id)
  local meta = seg_meta(prefix, s)
  if not meta or i >= tonumber(meta[2]) then return nil end
  return s, i, meta, seg_key(prefix, s)
end

-- A segment's live lease ranges, each {from = .., to = ..}.
local function seg_ranges(prefix, s)
  local live = redis.call('HGETALL', seg_key(prefix, s) .. ':l')
  local ranges = {}
  for k = 1, #live, 2 do
    if string.byte(live[k], 1) ~= 35 then
      ranges[#ranges + 1] = {from = tonumber(live[k]), to = tonumber(live[k + 1])}
    end
  end
  return ranges
end

-- The range of `ranges` holding job i, or nil.
local function range_of(ranges, i)
  for _, range in ipairs(ranges) do
    if i >= range.from and i < range.to then return range end
  end
end

-- The live lease range (from, to) holding job i, or nil.
local function seg_range(prefix, s, i)
  local range = range_of(seg_ranges(prefix, s), i)
  if range then return range.from, range.to end
end

-- Where payload i of a segment ends in its payload string.
local function payload_end(key, i)
  return struct.unpack('>I4', redis.call('GETRANGE', key .. ':o', 4 * i, 4 * i + 3))
end

-- The payloads of jobs from..to-1: where the first starts, where each ends
-- (4 bytes each, big-endian) and the payload bytes themselves.
local function seg_payloads(key, from, to)
  local start = from > 0 and payload_end(key, from - 1) or 0
  local ends = redis.call('GETRANGE', key .. ':o', 4 * from, 4 * to - 1)
  local stop = struct.unpack('>I4', string.sub(ends, -4))
  return start, ends, redis.call('GETRANGE', key .. ':p', start, stop - 1)
end

-- The payload JSON of job i.
local function seg_payload(key, i)
  local _, _, payload = seg_payloads(key, i, i + 1)
  return payload
end

-- When done job i of a segment created at `created` ms was done (ms).
local function seg_done_ms(key, created, i)
  local stamp = redis.call('GETRANGE', key .. ':d', 4 * i, 4 * i + 3)
  if #stamp < 4 then return created end
  return created + struct.unpack('>I4', stamp)
end

-- A segment job's envelope as the per-job hash stores it.
local function seg_envelope(meta, payload)
  return '{"q":' .. cjson.encode(meta[1]) .. ',"p":' .. payload .. ',"pr":0,"ma":' .. meta[3]
    .. ',"b":' .. meta[4] .. ',"c":' .. meta[5] .. '}'
end

-- Marks job i moved out and puts its envelope in the per-job hash.
local function seg_move_out(prefix, key, meta, id, i)
  redis.call('SETRANGE', key .. ':s', i, 'x')
  redis.call('HSET', prefix .. ':jobs', id, seg_envelope(meta, seg_payload(key, i)))
end

-- Whether a queue forgets jobs as soon as they are done (remove_on_complete).
local function keeps_no_done(qk)
  return redis.call('HGET', qk .. ':conf', 'remove') == '1'
end

local function seg_forget(prefix, s)
  local key = seg_key(prefix, s)
  redis.call('UNLINK', key, key .. ':p', key .. ':o', key .. ':s', key .. ':l', key .. ':r',
    key .. ':d')
end

-- `count` jobs of a segment ended here (done or moved out); once none is
-- left, the segment enters the done list (its retention clock), or goes at
-- once on a queue that keeps no finished jobs.
local function seg_ended(prefix, qk, s, count, now)
  if redis.call('HINCRBY', seg_key(prefix, s), 'left', -count) > 0 then return end
  if keeps_no_done(qk) then
    seg_forget(prefix, s)
  else
    redis.call('RPUSH', qk .. ':done', '@' .. s .. '|' .. now)
  end
end

-- `count` jobs of a lease range ended; the lease goes when none runs.
local function range_ended(prefix, qk, s, from, to, count)
  local live = seg_key(prefix, s) .. ':l'
  redis.call('HINCRBY', qk .. ':stats', 'sl', -count)
  if redis.call('HINCRBY', live, '#' .. from, -count) <= 0 then
    redis.call('HDEL', live, from, '#' .. from)
    redis.call('ZREM', qk .. ':leased', range_member(s, from, to))
    redis.call('HINCRBY', qk .. ':stats', 'sg', -1)
  end
end

-- Moves a running segment job out to the per-job structures: its envelope
-- into P:jobs, its lease as its own member with its range's score. Only if
-- `slot` holds that lease (any holder when slot is nil). Returns whether it
-- moved.
local function move_out_running(prefix, id, now, slot)
  local s, i, meta, key = seg_find(prefix, id)
  if not s then return false end
  local from, to = seg_range(prefix, s, i)
  if not from then return false end
  if redis.call('GETRANGE', key .. ':s', i, i) ~= '0' then return false end
  local qk = prefix .. ':q:' .. meta[1]
  local score = redis.call('ZSCORE', qk .. ':leased', range_member(s, from, to))
  if not score or (slot and not held_by(score, slot)) then return false end
  seg_move_out(prefix, key, meta, id, i)
  redis.call('ZADD', qk .. ':leased', score, id)
  range_ended(prefix, qk, s, from, to, 1)
  seg_ended(prefix, qk, s, 1, now)
  return true
end

-- A segment job that is not in the per-job structures, moved out if it is
-- running under `slot`'s lease (the rare paths then treat it as any job).
local function move_out_if_segment(prefix, id, now, slot)
  if is_seg_id(id) and redis.call('HEXISTS', prefix .. ':jobs', id) == 0 then
    move_out_running(prefix, id, now, slot)
  end
end

-- One per-job success: false if `slot` no longer holds its lease.
local function finish_job(prefix, qk, id, record, slot, remove_done)
  if not held_by(redis.call('ZSCORE', qk .. ':leased', id), slot) then return false end
  redis.call('ZREM', qk .. ':leased', id)
  local env = redis.call('HGET', prefix .. ':jobs', id)
  if env and redis.call('EXISTS', qk .. ':krun') == 1 then key_done(qk, cjson.decode(env).k) end
  if remove_done then
    for _, hash in ipairs({'jobs', 'att', 'err', 'prog'}) do
      redis.call('HDEL', prefix .. ':' .. hash, id)
    end
  else
    redis.call('HSET', prefix .. ':res', id, record)
    redis.call('RPUSH', qk .. ':done', id)
  end
  redis.call('HINCRBY', qk .. ':stats', 'done', 1)
  return true
end

-- Drops everything kept per job for `ids`.
local function forget_jobs(prefix, ids)
  for _, hash in ipairs({'jobs', 'res', 'err', 'att', 'prog'}) do
    bulk('HDEL', prefix .. ':' .. hash, ids)
  end
end

-- Finished jobs older than the retention period are forgotten, a bounded
-- number of done-list elements per call (the list is in finishing order):
-- comma-joined ids of one acknowledgement, or '@S|ms' for a segment.
local function forget_old_done(prefix, qk, now, retention)
  for _ = 1, 4 do
    local head = redis.call('LINDEX', qk .. ':done', 0)
    if not head then break end
    if string.byte(head, 1) == 64 then
      local s, at = string.match(head, '^@([^|]+)|(%d+)$')
      if tonumber(at) > now - retention then break end
      redis.call('LPOP', qk .. ':done')
      seg_forget(prefix, s)
    else
      local old = {}
      for id in string.gmatch(head, '[^,]+') do old[#old + 1] = id end
      local record = redis.call('HGET', prefix .. ':res', old[1])
      if record and cjson.decode(record).t > now - retention then break end
      redis.call('LPOP', qk .. ':done')
      forget_jobs(prefix, old)
    end
  end
end
