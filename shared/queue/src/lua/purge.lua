-- Forgets up to a bounded number of a queue's finished jobs per call (the
-- caller repeats until nothing is left). ARGV: prefix, queue, statuses
-- ('done', 'dead', 'cancelled')... Returns {jobs forgotten, elements
-- removed} (a segment whose jobs all moved out forgets none here).
local prefix, queue = ARGV[1], ARGV[2]
local qk = prefix .. ':q:' .. queue
local forgotten, removed = 0, 0
local function forget(ids)
  forget_jobs(prefix, ids)
  forgotten = forgotten + #ids
end
for i = 3, #ARGV do
  local status = ARGV[i]
  if status == 'done' then
    for _ = 1, 20 do
      local head = redis.call('LPOP', qk .. ':done')
      if not head then break end
      removed = removed + 1
      if string.byte(head, 1) == 64 then
        local s = string.match(head, '^@([^|]+)|')
        local _, done = string.gsub(redis.call('GET', seg_key(prefix, s) .. ':s') or '', '1', '')
        seg_forget(prefix, s)
        forgotten = forgotten + done
      else
        local ids = {}
        for id in string.gmatch(head, '[^,]+') do ids[#ids + 1] = id end
        forget(ids)
      end
    end
  else
    local ids = redis.call('ZRANGE', qk .. ':' .. status, 0, 4999)
    if #ids > 0 then
      bulk('ZREM', qk .. ':' .. status, ids)
      removed = removed + #ids
      forget(ids)
    end
  end
end
return {forgotten, removed}
