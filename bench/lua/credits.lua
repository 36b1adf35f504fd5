-- GET /getUserCredits?userId= for a random user of BENCH_KEYS (the first ledger page).
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("common")
local built

setup = common.setup
done = common.done

function init(args)
  common.seed()
  built = common.prebuild(common.load_users(os.getenv("BENCH_KEYS")), function(user)
    return common.credits("/getUserCredits", user)
  end)
end

function request()
  return built[math.random(#built)]
end

-- BENCH_DELAY_MS paces each connection (see common.pacing): latency below saturation.
delay = common.pacing()
