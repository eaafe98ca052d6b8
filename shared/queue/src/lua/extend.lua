-- Extends leases a worker holds. ARGV: prefix, queue, worker slot, deadline_ms, ids...
-- Returns the ids it no longer holds (lost or cancelled).
local prefix, queue, slot, deadline = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local qk = prefix .. ':q:' .. queue
local score = lease_score(deadline, slot)
local leased, lost = {}, {}
for i = 5, #ARGV, CHUNK do
  local part = redis.call('ZMSCORE', qk .. ':leased', unpack(ARGV, i, math.min(i + CHUNK - 1, #ARGV)))
  for j, current in ipairs(part) do
    -- Only leases this worker still holds; lost ones stay lost.
    if held_by(current, slot) then
      leased[#leased + 1] = score
      leased[#leased + 1] = ARGV[i + j - 1]
    else
      lost[#lost + 1] = ARGV[i + j - 1]
    end
  end
end
if #leased > 0 then bulk('ZADD', qk .. ':leased', leased, 'XX') end
return lost
