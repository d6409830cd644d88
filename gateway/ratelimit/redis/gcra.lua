-- GCRA over all the limits of one request, all or nothing, in one call.
--
-- KEYS[i]     the state of limit i: "<written µs> <debt µs>", where debt is
--             how far the limit's theoretical arrival time (TAT) was ahead
--             of the clock when written. Keeping debt (bounded by the burst
--             window) instead of an absolute TAT (~1.7e15 µs) keeps the
--             float arithmetic exact to well under a nanosecond.
-- ARGV[3i-2]  emission interval T = period / limit, in µs (may be fractional)
-- ARGV[3i-1]  burst offset = burst × T, in µs
-- ARGV[3i]    increment = cost × T, in µs
--
-- The clock is the server's (TIME), so gateways with skewed clocks agree.
-- A limit listed twice (same key) spends both costs. Nothing is written
-- unless every limit admits the request.
--
-- Returns {allowed 0|1, index (1-based), remaining, retry_after µs, reset_after µs}
-- for the limit that decided: when rejected, the one that frees up last;
-- when allowed, the one with the fewest units remaining.
if redis.replicate_commands then
  pcall(redis.replicate_commands) -- effects replication before Redis 5 (TIME is not deterministic)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local debt = {}
local before = {}
local rej, rej_retry, rej_reset = 0, -1, 0
for i = 1, n do
  local k = KEYS[i]
  local d = debt[k]
  if d == nil then
    d = 0
    local v = redis.call('GET', k)
    if v then
      local w, s = string.match(v, '^(%d+) (%S+)$')
      if w then
        d = tonumber(s) - (now - tonumber(w))
        if d < 0 then d = 0 end
      end
    end
    before[k] = d
  end
  local off = tonumber(ARGV[3 * i - 1])
  local nd = d + tonumber(ARGV[3 * i])
  local over = nd - off
  -- The tolerance absorbs float rounding of fractional intervals (1 ns,
  -- or a trillionth of the window); it is far below one unit.
  if over > 0.001 + off * 1e-12 then
    if over > rej_retry then
      rej, rej_retry, rej_reset = i, over, before[k]
    end
  end
  debt[k] = nd
end
if rej > 0 then
  return {0, rej, 0, math.ceil(rej_retry), math.ceil(rej_reset)}
end
local written = {}
local best, best_rem, best_reset = 0, -1, 0
for i = 1, n do
  local k = KEYS[i]
  local final = debt[k]
  if not written[k] then
    written[k] = true
    redis.call('SET', k, string.format('%d %.17g', now, final), 'PX', math.ceil(final / 1000) + 1)
  end
  local rem = math.floor((tonumber(ARGV[3 * i - 1]) - final) / tonumber(ARGV[3 * i - 2]) + 1e-9)
  if rem < 0 then rem = 0 end
  if best == 0 or rem < best_rem or (rem == best_rem and final > best_reset) then
    best, best_rem, best_reset = i, rem, final
  end
end
return {1, best, best_rem, 0, math.ceil(best_reset)}
