-- POST a generation as a random user of BENCH_KEYS to BENCH_PATH (/v1/generations or
-- /createGenerationRequest). One line in the file: the hot user.
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

function request()
  return built[math.random(#built)]
end
