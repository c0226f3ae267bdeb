-- wrk script: point selects by primary key through POST /v1/query, as a user homed in the
-- shard whose replica is local to the sidecar under test.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Homeport-User"] = "bench-user"

local rows = tonumber(os.getenv("BENCH_ROWS") or "500000")

request = function()
  local aid = math.random(1, rows)
  return wrk.format(nil, "/v1/query", nil,
    '{"sql":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":[' .. aid .. ']}')
end
