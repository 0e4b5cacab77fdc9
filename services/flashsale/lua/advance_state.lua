-- Move the sale's state only if Redis still holds the expected one (compare-and-set).
-- The purchase script may have paused the sale on its own; the scheduler must not undo that.
-- KEYS: 1 sale hash
-- ARGV: 1 expected state, 2 new state
local current = redis.call('HGET', KEYS[1], 'state')
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[2])
  return ARGV[2]
end
return current or ''
