-- wrk script of the fleet harness (tests/src/fleet/load.rs). With
-- NCPS_WRK_MISS=1 every request asks for a random narinfo no upstream has
-- (a miss); else the URL given to wrk. At the end it prints one line:
-- requests and answers by kind, summed over wrk's threads.
local threads = {}
local alphabet = "0123456789abcdfghijklmnpqrsvwxyz"

function setup(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

function init(args)
  miss = os.getenv("NCPS_WRK_MISS") == "1"
  ok, absent, server_errors, other = 0, 0, 0, 0
  math.randomseed((tonumber(os.getenv("NCPS_WRK_SEED")) or 0) * 1000 + id)
end

function request()
  if not miss then
    return wrk.request()
  end
  local hash = {}
  for i = 1, 32 do
    local k = math.random(1, 32)
    hash[i] = alphabet:sub(k, k)
  end
  return wrk.format("GET", "/" .. table.concat(hash) .. ".narinfo")
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 404 then
    absent = absent + 1
  elseif status >= 500 then
    server_errors = server_errors + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  local sum = { ok = 0, absent = 0, server_errors = 0, other = 0 }
  for _, thread in ipairs(threads) do
    for k in pairs(sum) do
      sum[k] = sum[k] + thread:get(k)
    end
  end
  local e = summary.errors
  io.write(string.format(
    "fleet-wrk seconds=%f p99_ms=%f socket_errors=%d ok=%d absent=%d server_errors=%d other=%d\n",
    summary.duration / 1e6, latency:percentile(99) / 1000, e.connect + e.read + e.write + e.timeout,
    sum.ok, sum.absent, sum.server_errors, sum.other))
end
