-- Load a template's claim configuration. Counters survive reloads of the same template, but not
-- a different template that reuses the id (the database was recreated while Redis kept its data).
-- KEYS: 1 template hash, 2 per-user claims hash
-- ARGV: 1 incarnation, then field/value pairs
local current = redis.call('HGET', KEYS[1], 'incarnation')
if current ~= ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  redis.call('HSET', KEYS[1], 'claimed', 0)
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
