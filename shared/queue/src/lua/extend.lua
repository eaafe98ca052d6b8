-- Extends leases a worker holds. ARGV: prefix, queue, worker slot, deadline_ms, ids...
-- Returns the ids it no longer holds (lost or cancelled).
local prefix, queue, slot, deadline = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local qk = prefix .. ':q:' .. queue
local score = lease_score(deadline, slot)
local leased, lost = {}, {}
-- Jobs still in a segment: their range's lease is extended, once per range
-- (each segment's ranges read once).
local per_job, members, seg_live = {}, {}, {}
for i = 5, #ARGV do
  local id = ARGV[i]
  if is_seg_id(id) and redis.call('HEXISTS', prefix .. ':jobs', id) == 0 then
    local s, index = seg_of(id)
    seg_live[s] = seg_live[s] or seg_ranges(prefix, s)
    local range = range_of(seg_live[s], index)
    local state = range and redis.call('GETRANGE', seg_key(prefix, s) .. ':s', index, index)
    local member = range and range_member(s, range.from, range.to)
    if state == '0' and held_by(redis.call('ZSCORE', qk .. ':leased', member), slot) then
      members[member] = true
    else
      lost[#lost + 1] = id
    end
  else
    per_job[#per_job + 1] = id
  end
end
for member in pairs(members) do
  leased[#leased + 1] = score
  leased[#leased + 1] = member
end
for i = 1, #per_job, CHUNK do
  local part = redis.call('ZMSCORE', qk .. ':leased', unpack(per_job, i, math.min(i + CHUNK - 1, #per_job)))
  for j, current in ipairs(part) do
    -- Only leases this worker still holds; lost ones stay lost.
    if held_by(current, slot) then
      leased[#leased + 1] = score
      leased[#leased + 1] = per_job[i + j - 1]
    else
      lost[#lost + 1] = per_job[i + j - 1]
    end
  end
end
if #leased > 0 then bulk('ZADD', qk .. ':leased', leased, 'XX') end
return lost
