-- embercache mirror: a versioned write, applied only when it is newer.
--
-- KEYS[1]  the entry key (a hash: v = version, r = record | d = 1 for a
--          tombstone), or for mode 'e' the namespace's epoch key (a string)
-- ARGV[1]  mode: 'p' put, 'd' delete, 'e' epoch
-- ARGV[2]  version (the epoch for 'e'); decimal, below 2^53
-- ARGV[3]  PX in ms for the key ('0' = no expiry)
-- ARGV[4]  the record (mode 'p'), else empty
-- ARGV[5]  pub/sub channel; ARGV[6] message, published only when applied
--          (deletes and epochs; never for puts)
-- ARGV[7]  mode 'p': the record's absolute expiry in unix ms ('0' = none).
--          A write applied late (queued in a client, retried by a cluster
--          client after a node came back) must not outlive its record: the
--          PX is capped at what is left by this server's clock, and a put
--          that has expired by then is stored as a tombstone instead.
--
-- Returns {applied (0|1), the version now stored}. A key holding anything
-- else than our hash (a foreign value under our prefix) counts as version
-- 0 and is replaced.
-- Redis 3.2-4.x replicate scripts verbatim and refuse a write after TIME
-- (below) unless effects replication is asked for; 5+ always do it.
if redis.replicate_commands then redis.replicate_commands() end
local v = tonumber(ARGV[2])
if ARGV[1] == 'e' then
  local t = redis.call('TYPE', KEYS[1])['ok']
  local cur = 0
  if t == 'string' then cur = tonumber(redis.call('GET', KEYS[1])) or 0 end
  if cur >= v then return {0, cur} end
  redis.call('SET', KEYS[1], ARGV[2])
  if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
  return {1, v}
end
local t = redis.call('TYPE', KEYS[1])['ok']
local cur = 0
if t == 'hash' then cur = tonumber(redis.call('HGET', KEYS[1], 'v')) or 0 end
if cur >= v then return {0, cur} end
local px = tonumber(ARGV[3])
local mode = ARGV[1]
if mode == 'p' and ARGV[7] and ARGV[7] ~= '0' then
  local t = redis.call('TIME')
  local left = tonumber(ARGV[7]) - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  if left <= 0 then mode = 'x' elseif left < px then px = left end
end
redis.call('DEL', KEYS[1])
if mode == 'p' then
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'r', ARGV[4])
elseif mode == 'x' then
  -- Expired before it arrived: keep only the version (and its PX).
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', '1')
else
  redis.call('HSET', KEYS[1], 'v', ARGV[2], 'd', '1')
  if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
end
if px > 0 then redis.call('PEXPIRE', KEYS[1], px) end
return {1, v}
