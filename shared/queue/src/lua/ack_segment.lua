-- Records successes of segment jobs (see common.lua) leased to one worker:
-- a SETRANGE per run of consecutive jobs and a counter per lease range, not
-- a write (or even a Lua step) per job.
-- ARGV: prefix, queue, now_ms, worker slot, retention_ms, then per segment:
--   S, runs, records, then `runs` pairs first, last (inclusive, ascending,
--   disjoint), then `records` pairs index, result record (ascending): the exceptions,
--   results that are not null (a null result of a first attempt, the
--   common case, has no record).
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

-- The common case: every job of first..last waiting for this ack ('0')
-- under leases this worker holds. Then the whole run is counted to its
-- ranges at once; otherwise nothing is counted and false returned.
local function whole_run(ranges, states, first, last)
  if string.find(states, '[^0]') then return false end
  local counts, covered = {}, 0
  for k, range in ipairs(ranges) do
    local lo, hi = math.max(range.from, first), math.min(range.to - 1, last)
    if hi >= lo then
      if not range.mine then return false end
      counts[k] = hi - lo + 1
      covered = covered + hi - lo + 1
    end
  end
  if covered ~= last - first + 1 then return false end
  for k, n in pairs(counts) do ranges[k].done = ranges[k].done + n end
  return true
end

-- Marks jobs first..last done at `stamp` (ms after the segment was
-- created, 4 bytes): their status bytes and done times, a SETRANGE each.
local function mark_run(key, stamp, first, last)
  redis.call('SETRANGE', key .. ':s', first, string.rep('1', last - first + 1))
  redis.call('SETRANGE', key .. ':d', 4 * first, string.rep(stamp, last - first + 1))
end

-- Marks runs of consecutive indices done.
local function mark_done(key, stamp, done)
  local k = 1
  while k <= #done do
    local first, last = done[k], done[k]
    while done[k + 1] == last + 1 do
      k = k + 1
      last = done[k]
    end
    mark_run(key, stamp, first, last)
    k = k + 1
  end
end

local at = 6
while at <= #ARGV do
  local s, runs, nrecords = ARGV[at], tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local runs_at = at + 3
  local records_at = runs_at + 2 * runs
  at = records_at + 2 * nrecords
  local key = seg_key(prefix, s)
  -- Records by index, and their indices in order: a whole run takes its
  -- records by moving along the second, not by looking at each of its jobs.
  local records, order, next_record = {}, {}, 1
  for k = records_at, at - 1, 2 do
    local i = tonumber(ARGV[k])
    records[i] = ARGV[k + 1]
    order[#order + 1] = i
  end
  local ranges = held_ranges(s)
  local created = tonumber(redis.call('HGET', key, 'c') or now)
  local stamp = struct.pack('>I4', math.max(0, math.min(now - created, 4294967295)))
  local done, count, results = {}, 0, {}
  local function result_of(i)
    local record = records[i]
    if record then
      results[#results + 1] = i
      results[#results + 1] = record
    end
  end
  for r = runs_at, records_at - 1, 2 do
    local first, last = tonumber(ARGV[r]), tonumber(ARGV[r + 1])
    local states = redis.call('GETRANGE', key .. ':s', first, last)
    if #states == last - first + 1 and whole_run(ranges, states, first, last) then
      mark_run(key, stamp, first, last)
      count = count + last - first + 1
      while order[next_record] and order[next_record] < first do next_record = next_record + 1 end
      while order[next_record] and order[next_record] <= last do
        result_of(order[next_record])
        next_record = next_record + 1
      end
    else
      for i = first, last do
        local state = string.byte(states, i - first + 1)
        if state == 48 then
          local range = range_of(ranges, i)
          if range and range.mine then
            done[#done + 1] = i
            range.done = range.done + 1
            result_of(i)
          else
            lost[#lost + 1] = seg_id(s, i)
          end
        elseif state == 120 then
          -- Moved out (a lease that expired, a release): finished per job.
          local record = records[i] or ('{"a":1,"t":' .. now .. ',"r":null}')
          if not finish_job(prefix, qk, seg_id(s, i), record, slot, remove_done) then
            lost[#lost + 1] = seg_id(s, i)
          end
        end
        -- '1': acknowledged already; nothing to do. No byte: no such job.
      end
    end
  end
  mark_done(key, stamp, done)
  count = count + #done
  if count > 0 then
    if #results > 0 then bulk('HSET', key .. ':r', results) end
    for _, range in ipairs(ranges) do
      if range.done > 0 then range_ended(prefix, qk, s, range.from, range.to, range.done) end
    end
    seg_ended(prefix, qk, s, count, now)
    total = total + count
  end
end
if total > 0 then redis.call('HINCRBY', qk .. ':stats', 'done', total) end
forget_old_done(prefix, qk, now, retention)
return lost
