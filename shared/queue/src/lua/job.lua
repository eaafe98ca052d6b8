-- Everything about one job. ARGV: prefix, id
-- Returns {envelope, status, attempts, result record or '', error record or '',
-- progress record or '', lease deadline ms or ''},
-- or {} for an unknown id.
local prefix, id = ARGV[1], ARGV[2]
local env = redis.call('HGET', prefix .. ':jobs', id)
if not env then return {} end
local queue = cjson.decode(env).q
local qk = prefix .. ':q:' .. queue
local att = tonumber(redis.call('HGET', prefix .. ':att', id) or 0)
local res = redis.call('HGET', prefix .. ':res', id) or ''
local err = redis.call('HGET', prefix .. ':err', id) or ''
local status, lease = nil, ''
if res ~= '' then
  status = 'done'
elseif redis.call('ZSCORE', qk .. ':cancelled', id) then
  status = 'cancelled'
elseif redis.call('ZSCORE', qk .. ':dead', id) then
  status = 'dead'
elseif redis.call('ZSCORE', qk .. ':leased', id) then
  status = 'running'
  att = att + 1
  lease = math.floor(tonumber(redis.call('ZSCORE', qk .. ':leased', id)) / SLOTS)
elseif err ~= '' then
  status = 'failed'
else
  status = 'pending'
end
return {env, status, att, res, err, redis.call('HGET', prefix .. ':prog', id) or '', lease}
