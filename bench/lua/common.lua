-- Shared by the bench's wrk scripts: key files, prebuilt requests, and one JSON line of results.
local M = {}

-- "userId key" lines written by bench/common.py.
function M.load_users(path)
  local users = {}
  for line in io.lines(path) do
    local user, key = line:match("^(%S+)%s+(%S+)$")
    if user then users[#users + 1] = { user = user, key = key } end
  end
  assert(#users > 0, "no users in " .. path)
  return users
end

-- Each thread gets an id, so that threads draw different random users.
local counter = 0
function M.setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end

function M.seed()
  math.randomseed(os.time() * 1000 + (thread_id or 0) * 7919)
end

local BODY = '{"userId":"%s","model":"model-a","style":"anime","color":"vibrant",'
  .. '"size":"512x512","prompt":"A cat sitting on a futuristic throne"}'

function M.create(path, user)
  local headers = {
    ["Authorization"] = "Bearer " .. user.key,
    ["Content-Type"] = "application/json",
  }
  return wrk.format("POST", path, headers, string.format(BODY, user.user))
end

function M.credits(path, user)
  local headers = { ["Authorization"] = "Bearer " .. user.key }
  return wrk.format("GET", path .. "?userId=" .. user.user, headers)
end

-- Requests are built once per user in init(): formatting them per request would cost wrk CPU
-- that the server, on the same cores, needs.
function M.prebuild(users, build)
  local built = {}
  for i, user in ipairs(users) do built[i] = build(user) end
  return built
end

-- With BENCH_DELAY_MS, wrk's delay(): each connection waits that long after each answer before its
-- next request (a load below saturation). Without it, nil: no pause.
function M.pacing()
  local pause = tonumber(os.getenv("BENCH_DELAY_MS") or "")
  if pause then
    return function() return pause end
  end
  return nil
end

function M.done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end

return M
