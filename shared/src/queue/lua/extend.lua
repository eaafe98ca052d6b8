-- Extends leases a worker holds. ARGV: prefix, queue, worker, deadline_ms, ids...
local prefix, queue, worker, deadline = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local qk = prefix .. ':q:' .. queue
local leased = {}
for i = 5, #ARGV do
  leased[#leased + 1] = deadline
  leased[#leased + 1] = ARGV[i] .. ':' .. worker
end
-- XX: only leases still held are extended; lost ones stay lost.
if #leased > 0 then bulk('ZADD', qk .. ':leased', leased, 'XX') end
return 0
