-- Records successes of segment jobs (see common.lua) leased to one worker:
-- a byte per job and a counter per lease range, not a write per job.
-- ARGV: prefix, queue, now_ms, worker slot, retention_ms, then per segment:
--   S, count, then count ascending indices, then count result records
--   ('' for a null result of a first attempt, the common case).
-- Jobs moved out to the per-job structures are finished there.
-- Returns the ids whose lease this worker no longer held (ignored).
local prefix, queue, now, slot = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local retention = tonumber(ARGV[5])
local qk = prefix .. ':q:' .. queue
local conf = redis.call('HMGET', qk .. ':conf', 'keep_done', 'remove')
if conf[1] then retention = tonumber(conf[1]) end
local remove_done = conf[2] == '1'
local lost, total = {}, 0

-- The live lease ranges of a segment, each with whether `slot` holds it.
local function held_ranges(s)
  local ranges = seg_ranges(prefix, s)
  for _, range in ipairs(ranges) do
    range.mine = held_by(redis.call('ZSCORE', qk .. ':leased', range_member(s, range.from, range.to)), slot)
    range.done = 0
  end
  return ranges
end

-- Marks runs of consecutive indices done, one SETRANGE per run.
local function mark_done(key, done)
  local k = 1
  while k <= #done do
    local first, last = done[k], done[k]
    while done[k + 1] == last + 1 do
      k = k + 1
      last = done[k]
    end
    redis.call('SETRANGE', key .. ':s', first, string.rep('1', last - first + 1))
    k = k + 1
  end
end

local at = 6
while at <= #ARGV do
  local s, count = ARGV[at], tonumber(ARGV[at + 1])
  local first, records = at + 2, at + 2 + count
  at = records + count
  local key = seg_key(prefix, s)
  local lo, hi = tonumber(ARGV[first]), tonumber(ARGV[records - 1])
  local states = redis.call('GETRANGE', key .. ':s', lo, hi)
  local ranges = held_ranges(s)
  local done, results = {}, {}
  for k = 0, count - 1 do
    local i = tonumber(ARGV[first + k])
    local record = ARGV[records + k]
    local state = string.byte(states, i - lo + 1)
    if state == 48 then
      local range = range_of(ranges, i)
      if range and range.mine then
        done[#done + 1] = i
        range.done = range.done + 1
        if record ~= '' then
          results[#results + 1] = i
          results[#results + 1] = record
        end
      else
        lost[#lost + 1] = seg_id(s, i)
      end
    elseif state == 120 then
      -- Moved out (a lease that expired, a release): finished per job.
      if record == '' then record = '{"a":1,"t":' .. now .. ',"r":null}' end
      if not finish_job(prefix, qk, seg_id(s, i), record, slot, remove_done) then
        lost[#lost + 1] = seg_id(s, i)
      end
    end
    -- '1': acknowledged already; nothing to do.
  end
  if #done > 0 then
    mark_done(key, done)
    if #results > 0 then bulk('HSET', key .. ':r', results) end
    redis.call('HSET', key, 't', now)
    for _, range in ipairs(ranges) do
      if range.done > 0 then range_ended(prefix, qk, s, range.from, range.to, range.done) end
    end
    seg_ended(prefix, qk, s, #done, now)
    total = total + #done
  end
end
if total > 0 then redis.call('HINCRBY', qk .. ':stats', 'done', total) end
forget_old_done(prefix, qk, now, retention)
return lost
