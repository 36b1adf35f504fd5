-- The framework's ceiling: GET /healthz (an async no-op route of the same app: no key, no body).
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("common")

setup = common.setup
done = common.done

local req
function init(args)
  req = wrk.format("GET", os.getenv("BENCH_PATH") or "/healthz")
end

function request()
  return req
end
