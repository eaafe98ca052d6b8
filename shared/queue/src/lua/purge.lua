-- Forgets up to a bounded number of a queue's finished jobs per call (the
-- caller repeats until 0). ARGV: prefix, queue, statuses ('done', 'dead',
-- 'cancelled')... Returns how many jobs were forgotten.
local prefix, queue = ARGV[1], ARGV[2]
local qk = prefix .. ':q:' .. queue
local forgotten = 0
local function forget(ids)
  for _, hash in ipairs({'jobs', 'res', 'err', 'att', 'prog'}) do
    bulk('HDEL', prefix .. ':' .. hash, ids)
  end
  forgotten = forgotten + #ids
end
for i = 3, #ARGV do
  local status = ARGV[i]
  if status == 'done' then
    for _ = 1, 20 do
      local head = redis.call('LPOP', qk .. ':done')
      if not head then break end
      local ids = {}
      for id in string.gmatch(head, '[^,]+') do ids[#ids + 1] = id end
      forget(ids)
    end
  else
    local ids = redis.call('ZRANGE', qk .. ':' .. status, 0, 4999)
    if #ids > 0 then
      bulk('ZREM', qk .. ':' .. status, ids)
      forget(ids)
    end
  end
end
return forgotten
