-- Everything about one job. ARGV: prefix, id
-- Returns {envelope, status, attempts, result record or '', error record or '',
-- progress record or '', lease deadline ms or ''},
-- or {} for an unknown id.
local prefix, id = ARGV[1], ARGV[2]
local env = redis.call('HGET', prefix .. ':jobs', id)

-- A job still in its segment: done, running in a lease range, or waiting.
local function segment_job()
  local s, i, meta, key = seg_find(prefix, id)
  if not s then return {} end
  local state = redis.call('GETRANGE', key .. ':s', i, i)
  local envelope = seg_envelope(meta, seg_payload(key, i))
  local qk = prefix .. ':q:' .. meta[1]
  if state == '1' then
    -- A queue that keeps no finished jobs: gone once done.
    if keeps_no_done(qk) then return {} end
    local res = redis.call('HGET', key .. ':r', i)
      or ('{"a":1,"t":' .. seg_done_ms(key, tonumber(meta[5]), i) .. ',"r":null}')
    return {envelope, 'done', 1, res, '', '', ''}
  end
  if state ~= '0' then return {} end
  local from, to = seg_range(prefix, s, i)
  if from then
    local score = redis.call('ZSCORE', qk .. ':leased', range_member(s, from, to))
    return {envelope, 'running', 1, '', '', '', math.floor(tonumber(score) / SLOTS)}
  end
  return {envelope, 'pending', 0, '', '', '', ''}
end

if not env then
  if is_seg_id(id) then return segment_job() end
  return {}
end
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
