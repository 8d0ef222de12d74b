-- Constant request rate for wrk, for the latency benchmark:
--   wrk -t1 -c50 -d10s --latency -s benchmarks/paced.lua http://127.0.0.1:8080/x -- <requests per second per thread>
--
-- Why: wrk sends the next request on a connection as soon as the previous answer arrives, so it always
-- runs the server at saturation, where latency is mostly queueing. To see what the server itself adds, the
-- load has to be fixed below saturation (here half of it) and the same for every server compared.
--
-- How: wrk calls delay() after each answer, on the thread of the connection that got it, and waits that
-- many milliseconds before that connection sends its next request. This script keeps one schedule per
-- thread: send slots exactly 1/rate apart. Each call takes the next free slot (never one in the past, so a
-- server that fell behind is not hit with a catch-up burst afterwards) and returns the time until it.
-- Any connection that is free takes the next slot, so the thread's requests go out at the given rate as
-- long as enough connections are idle (connections > rate x latency, true by far at 50 connections).
-- Each connection's first request goes out at once (wrk asks delay() only after an answer): a burst of
-- -c requests at the start, negligible over seconds.
--
-- Caveats, all harmless for the average rate and for the latency figures:
-- - wrk truncates delay() to whole milliseconds and fires its timers with millisecond precision, so a
--   request can leave up to ~1 ms before its slot. The schedule advances by exact steps regardless, so the
--   average rate is exact; single requests jitter.
-- - wrk starts its latency clock when a request is written, after the delay, so the figures are the
--   server's response time (plus loopback and wrk), not the waiting for a slot.
-- - The clock is CLOCK_MONOTONIC through LuaJIT's FFI (wrk's Lua has no sub-second clock of its own).
--
-- The rate argument is per thread: bench.py divides the target rate by -t.

local ffi = require("ffi")

ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } paced_timespec;
int clock_gettime(int clock_id, paced_timespec *tp);
]])

local CLOCK_MONOTONIC = 1
local timespec = ffi.new("paced_timespec")

local function now_ms()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

local interval_ms = nil -- between two send slots of this thread
local next_slot_ms = nil -- the next free slot

function init(args)
  local rate = tonumber(args[1])
  if rate == nil or rate <= 0 then
    error("paced.lua: give the requests per second per thread after --, e.g. -- 5000")
  end
  interval_ms = 1000 / rate
end

function delay()
  local now = now_ms()
  if next_slot_ms == nil or next_slot_ms < now then
    next_slot_ms = now
  end
  local wait = next_slot_ms - now
  next_slot_ms = next_slot_ms + interval_ms
  return wait
end
