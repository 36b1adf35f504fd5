-- The framework's ceiling: a no-op route of the same app. By default POST /_bench/noop with a body
-- the size of a create (served with IMAGEGEN_BENCH_ROUTES=1: it reads the body and answers 200);
-- BENCH_METHOD=GET BENCH_PATH=/healthz measures the lightest route, a GET without a body.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("common")

setup = common.setup
done = common.done

local req
function init(args)
  local method = os.getenv("BENCH_METHOD") or "POST"
  local path = os.getenv("BENCH_PATH") or "/_bench/noop"
  if method == "GET" then
    req = wrk.format("GET", path)
  else
    req = common.create(path, { user = "bench-noop", key = "no-key-needed" })
  end
end

function request()
  return req
end

-- BENCH_DELAY_MS paces each connection (see common.pacing): the framework's latency at a given load.
delay = common.pacing()
