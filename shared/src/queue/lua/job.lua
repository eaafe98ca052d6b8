-- Everything about one job. ARGV: prefix, id
-- Returns {envelope, status, attempts, result record or '', error record or ''},
-- or {} for an unknown id.
local prefix, id = ARGV[1], ARGV[2]
local env = redis.call('HGET', prefix .. ':jobs', id)
if not env then return {} end
-- Leases are "id:worker" members; in-flight jobs are few, so a scan is cheap.
local function leased(key, job_id)
  local cursor = '0'
  repeat
    local page = redis.call('ZSCAN', key, cursor, 'MATCH', job_id .. ':*', 'COUNT', 1000)
    cursor = page[1]
    if #page[2] > 0 then return true end
  until cursor == '0'
  return false
end
local queue = cjson.decode(env).q
local qk = prefix .. ':q:' .. queue
local att = tonumber(redis.call('HGET', prefix .. ':att', id) or 0)
local res = redis.call('HGET', prefix .. ':res', id) or ''
local err = redis.call('HGET', prefix .. ':err', id) or ''
local status
if res ~= '' then
  status = 'done'
elseif redis.call('ZSCORE', qk .. ':dead', id) then
  status = 'dead'
elseif leased(qk .. ':leased', id) then
  status = 'running'
  att = att + 1
elseif err ~= '' then
  status = 'failed'
else
  status = 'pending'
end
return {env, status, att, res, err}
