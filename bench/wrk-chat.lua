-- wrk script of bench/gateway.py: POSTs BENCH_BODY with the headers of BENCH_HEADERS
-- ("Name: value" lines) and prints one machine-readable RESULT line at the end.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
for line in string.gmatch(os.getenv("BENCH_HEADERS") or "", "[^\n]+") do
  local name, value = string.match(line, "^([^:]+):%s*(.*)$")
  if name then
    wrk.headers[name] = value
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT requests=%d duration_us=%d errors=%d status=%d connect=%d read=%d write=%d timeout=%d p50=%d p90=%d p99=%d max=%d mean=%.0f\n",
    summary.requests, summary.duration, e.status + e.connect + e.read + e.write + e.timeout, e.status, e.connect,
    e.read, e.write, e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    latency.mean))
end
