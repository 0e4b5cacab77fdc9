-- Move the sale's state only if Redis still holds the expected one (compare-and-set).
-- The purchase script may have paused the sale on its own; the scheduler must not undo that.
-- Fields given with the state (e.g. the window's start) are written with it, in the same step.
-- KEYS: 1 sale hash
-- ARGV: 1 expected state, 2 new state, then field/value pairs to write with it
local current = redis.call('HGET', KEYS[1], 'state')
if current == ARGV[1] then
  redis.call('HSET', KEYS[1], 'state', ARGV[2])
  for i = 3, #ARGV, 2 do
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
  return ARGV[2]
end
return current or ''
