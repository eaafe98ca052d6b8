-- Extends leases a worker holds. ARGV: prefix, worker, deadline_ms, ids...
local prefix, worker, deadline = ARGV[1], ARGV[2], tonumber(ARGV[3])
for i = 4, #ARGV do
  local id = ARGV[i]
  local f = redis.call('HMGET', prefix .. ':job:' .. id, 'queue', 'worker', 'status')
  if f[1] and f[2] == worker and f[3] == 'running' then
    redis.call('ZADD', prefix .. ':q:' .. f[1] .. ':leased', 'XX', deadline, id)
  end
end
return 0
