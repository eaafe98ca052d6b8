-- Stores a job's progress and appends log lines, keeping the last
-- max_lines lines and at most max_bytes of them.
-- ARGV: prefix, id, now_ms, fraction ('' = unchanged), message, max_lines,
--   max_bytes, lines...
-- Returns 1, or 0 for an unknown job.
local prefix, id, now = ARGV[1], ARGV[2], tonumber(ARGV[3])
local fraction, message = ARGV[4], ARGV[5]
local max_lines, max_bytes = tonumber(ARGV[6]), tonumber(ARGV[7])
-- A running segment job moves out, so its progress is kept per job.
if is_seg_id(id) and redis.call('HEXISTS', prefix .. ':jobs', id) == 0 then
  move_out_running(prefix, id, now)
end
if redis.call('HEXISTS', prefix .. ':jobs', id) == 0 then return 0 end
local raw = redis.call('HGET', prefix .. ':prog', id)
local rec = raw and cjson.decode(raw) or {}
if fraction ~= '' then
  rec.f, rec.m, rec.t = tonumber(fraction), message, now
end
local lines = {}
if type(rec.l) == 'table' then lines = rec.l end
for i = 8, #ARGV do lines[#lines + 1] = ARGV[i] end
local bytes = 0
for _, line in ipairs(lines) do bytes = bytes + #line end
local first = 1
while #lines - first + 1 > max_lines or bytes > max_bytes do
  bytes = bytes - #lines[first]
  first = first + 1
end
local kept = {}
for i = first, #lines do kept[#kept + 1] = lines[i] end
if #kept > 0 then rec.l = kept else rec.l = nil end
redis.call('HSET', prefix .. ':prog', id, cjson.encode(rec))
return 1
