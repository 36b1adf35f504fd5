-- A mix for the memory run: BENCH_CREATE_SHARE of the requests are creates on /v1/generations
-- (202, queued), the rest getUserCredits, each as a random user of BENCH_KEYS.
package.path = os.getenv("BENCH_LUA_DIR") .. "/?.lua;" .. package.path
local common = require("common")
local creates, reads, share

setup = common.setup
done = common.done

function init(args)
  common.seed()
  share = tonumber(os.getenv("BENCH_CREATE_SHARE") or "0.5")
  local users = common.load_users(os.getenv("BENCH_KEYS"))
  creates = common.prebuild(users, function(user) return common.create("/v1/generations", user) end)
  reads = common.prebuild(users, function(user) return common.credits("/getUserCredits", user) end)
end

function request()
  local pool = math.random() < share and creates or reads
  return pool[math.random(#pool)]
end
