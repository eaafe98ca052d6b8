-- Extends leases a worker holds. ARGV: prefix, queue, worker, deadline_ms, ids...
local prefix, queue, worker, deadline = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local qk = prefix .. ':q:' .. queue
local ids = {}
for i = 5, #ARGV do ids[#ids + 1] = ARGV[i] end
local owners = hmget(qk .. ':owner', ids)
local leased = {}
for i, id in ipairs(ids) do
  if owners[i] == worker then
    leased[#leased + 1] = deadline
    leased[#leased + 1] = id
  end
end
if #leased > 0 then bulk('ZADD', qk .. ':leased', leased, 'XX') end
return 0
