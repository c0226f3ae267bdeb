-- wrk script: inserts through POST /v1/query, each request as the next of BENCH_USERS users
-- (cell-bench-0 .. cell-bench-<n-1>, placed in the sidecar's region beforehand), so the writes
-- spread over the region's cells the way placement spread the users.
wrk.method = "POST"
wrk.path = "/v1/query"
wrk.headers["Content-Type"] = "application/json"

local users = tonumber(os.getenv("BENCH_USERS") or "64")
local threads = 0
local n = 0

setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end

request = function()
  n = n + 1
  local user = "cell-bench-" .. tostring((n * 7 + (id or 0)) % users)
  wrk.headers["Homeport-User"] = user
  return wrk.format(nil, nil, nil,
    '{"sql":"INSERT INTO notes (user_id, body) VALUES ($1, $2)","params":["' .. user .. '","x"]}')
end
