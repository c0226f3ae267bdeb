-- wrk script: point selects by primary key through POST /v1/query, as a user homed in the
-- shard whose replica is local to the sidecar under test. Requests are built once in init()
-- so the load generator spends its CPU on sending, not on string building.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Homeport-User"] = "bench-user"

local rows = tonumber(os.getenv("BENCH_ROWS") or "500000")
local requests = {}
local n = 0

init = function(args)
  math.randomseed(os.time() + tostring({}):len())
  for i = 1, 4096 do
    local aid = math.random(1, rows)
    requests[i] = wrk.format(nil, "/v1/query", nil,
      '{"sql":"SELECT abalance FROM pgbench_accounts WHERE aid = $1","params":[' .. aid .. ']}')
  end
end

request = function()
  n = n + 1
  return requests[(n % 4096) + 1]
end
