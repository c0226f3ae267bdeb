-- wrk script: inserts through POST /v1/query as a user homed in the sidecar's own region; with
-- BENCH_KEYED=1 every request carries a fresh Idempotency-Key (thread id + counter + run id).
wrk.method = "POST"
wrk.path = "/v1/query"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Homeport-User"] = "bench-writer"
wrk.body = '{"sql":"INSERT INTO notes (user_id, body) VALUES ($1, $2)","params":["bench-writer","x"]}'

local keyed = os.getenv("BENCH_KEYED") == "1"
local run = os.getenv("BENCH_RUN") or "0"
local threads = 0
local n = 0

-- Each thread gets its own `id` (a global in the thread's Lua state), so keys never repeat.
setup = function(thread)
  threads = threads + 1
  thread:set("id", threads)
end

request = function()
  if not keyed then
    return wrk.format()
  end
  n = n + 1
  wrk.headers["Idempotency-Key"] = run .. "-" .. tostring(id) .. "-" .. n
  return wrk.format()
end
