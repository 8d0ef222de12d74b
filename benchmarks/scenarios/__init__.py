# The benchmark scenarios, one module each: a function `(Bench) -> result`, whose result says which figures
# go into the table (each with what it is compared with, and the goal), and what to warn about. bench.py
# runs them in this order:
#
#   1 throughput   the dispatcher (3 backends, checks and metrics on) against the trio + h11 baseline
#   7 profile      py-spy on the dispatcher under scenario 1's load (only with --profile)
#   2 pool_size    1,000 backends against 3
#   3 health_cost  1,000 backends checked every second: idle CPU, and req/s against 3 backends
#   8 streams      1,000 backends streaming their load against the same pool polled
#   4 latency      p50/p99 at half the saturating rate, against the baseline at the same rate
#   5 memory       resident memory with 10,000 idle keep-alive connections
#   6 workers      --workers 2 against --workers 1 (when the flag exists)
#   9 access_log   --access-log FILE (text, json) against no access log
#  10 tls          the front door over TLS against plain HTTP: keep-alive req/s, new connections/s
#  11 routes       20 routes (none match, the last matches, a sticky split) against one pool, no routes
#
# What they share, beside harness.py's processes, wrk and /proc: results.py (the rows and the comparisons),
# context.py (the settings, the shared backends, loading in turns), servers.py (starting the dispatcher and
# the baseline), idle.py (the idle CPU window of scenarios 3 and 8).
#
# Every server is a child process started with `running` (stopped in a `finally`); the servers under load
# run on the first CPU and everything else (wrk, backends, clients, py-spy) on the others, except in
# scenario 6. Each comparison starts both sides at once and loads them in turns (`Bench.take_turns`):
# `rounds` rounds of one wrk run per side, in the order A B, B A, A B ..., the side not being loaded
# parked on the wrk CPUs. Each figure is the median of its side's runs; a ratio is the median of the
# rounds' ratios. It must not import `dispatcher`: the dispatcher runs as `python -m dispatcher`.
