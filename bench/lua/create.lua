-- POST a generation as a random user of BENCH_KEYS to BENCH_PATH (/v1/generations or
-- /createGenerationRequest). One line in the file: the hot user. BENCH_SEQUENTIAL=1 walks the users
-- in order instead (each thread from its own offset): the warm-up uses it so that every user's key
-- has been seen once, as on a server that has been up for a while. BENCH_DELAY_MS paces each
-- connection: it waits that long after each answer before its next request (a load below saturation).
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("common")
local built

setup = common.setup
done = common.done

function init(args)
  common.seed()
  local path = os.getenv("BENCH_PATH")
  built = common.prebuild(common.load_users(os.getenv("BENCH_KEYS")), function(user)
    return common.create(path, user)
  end)
end

-- With BENCH_SEQUENTIAL=1, thread k of BENCH_THREADS walks users k, k + threads, k + 2 * threads...
local sequential = os.getenv("BENCH_SEQUENTIAL") == "1"
local step = tonumber(os.getenv("BENCH_THREADS") or "1")
local next_index
function request()
  if sequential then
    next_index = next_index and next_index + step or (thread_id or 1)
    if next_index > #built then next_index = (thread_id or 1) end
    return built[next_index]
  end
  return built[math.random(#built)]
end

delay = common.pacing()
