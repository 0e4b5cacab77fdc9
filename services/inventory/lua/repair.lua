-- Rewrite a SKU's mirrored `available` from PostgreSQL, unless a newer ledger entry wrote it meanwhile.
-- Unlike mirror.lua it also replaces a copy whose fields are missing or not numbers (garbled or lost).
-- KEYS[1] stock hash; ARGV[1] available, ARGV[2] ledger sequence PostgreSQL had when it was read.
local seen = tonumber(redis.call('HGET', KEYS[1], 'seq'))
local available = tonumber(redis.call('HGET', KEYS[1], 'available'))
if seen ~= nil and available ~= nil and seen > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'available', ARGV[1], 'seq', ARGV[2])
return 1
