-- wrk script for bench/run: replay pre-generated, pre-signed requests.
--
--   wrk -t2 -c64 -d30s --latency -s bench/wrk_replay.lua http://127.0.0.1:PORT -- DIR MODE [PAUSE]
--
-- DIR holds one file per wrk thread, requests-<n>.txt (n = 1, 2, ...), one request a line:
--   <sign> <path?query> <body>
-- Each thread replays its own file in order, so request i of a thread is sent at most once
-- (MODE "unique"). When a file runs out the thread starts again from its first line and counts
-- "wrapped": in unique mode that is a replay the harness reports, in MODE "wrap" (the bare
-- baseline) it is expected.
--
-- PAUSE (milliseconds, default 0) paces the load: when above 0, each connection waits an
-- exponentially distributed time of that mean before each request (wrk's delay()), so that the
-- requests of all connections arrive about as a Poisson stream. At 0, delay() is not defined at
-- all: wrk then sends each request as soon as the previous answer is in, with no timer between.
--
-- response() classifies each answer: HTTP 200 with "code":1 is a success; anything else is
-- counted under "http_<status>" or "code_<code>". done() prints one line "WRK_RESULT {json}"
-- with the summary, the latency percentiles and every thread's counters.

local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("tid", thread_count)
   table.insert(threads, thread)
end

-- Per-thread state (each wrk thread has its own Lua state).
local requests = {}
local total = 0
local cursor = 0
local peek = false
issued = 0      -- requests taken from the file (the first `issued` lines were sent)
wrapped = 0     -- requests sent after the file ran out
responses = 0   -- answers received
successes = 0   -- HTTP 200 with "code":1
nonsuccess = 0  -- every other answer
codes = {}      -- "http_<status>" / "code_<code>" -> count
loaded = 0

function init(args)
   local dir = args[1]
   local mode = args[2] or "unique"
   local path = dir .. "/requests-" .. tid .. ".txt"
   local file = assert(io.open(path, "r"))
   for line in file:lines() do
      local sign, target, body = line:match("^(%S+) (%S+) (.*)$")
      if sign ~= nil then
         total = total + 1
         requests[total] = wrk.format("POST", target, {
            ["Content-Type"] = "application/json",
            ["sign"] = sign,
         }, body)
      end
   end
   file:close()
   loaded = total
   local mean_pause_ms = tonumber(args[3] or "0") or 0
   if mean_pause_ms > 0 then
      math.randomseed(tid * 7919 + total)
      -- wrk reads delay() from the first thread's state after init(), and the timer takes whole
      -- milliseconds: round, rather than truncate, so that the mean pause stays as asked.
      function delay()
         return math.floor(-math.log(1 - math.random()) * mean_pause_ms + 0.5)
      end
   end
   if total == 0 then
      error("no requests in " .. path)
   end
   -- wrk 4.x calls request() once on the first thread to check the request's syntax and does
   -- not send that one: hand it the first request without consuming it. (Were it sent anyway,
   -- it would go out twice: an idempotent replay, with no effect on the accounting.)
   peek = (tid == 1)
end

function request()
   if peek then
      peek = false
      return requests[1]
   end
   cursor = cursor + 1
   if cursor > total then
      cursor = 1
   end
   if issued < total then
      issued = issued + 1
   else
      wrapped = wrapped + 1
   end
   return requests[cursor]
end

function response(status, headers, body)
   responses = responses + 1
   local key
   if status ~= 200 then
      key = "http_" .. status
   else
      local code = body:match('"code":(%-?%d+)')
      if code == "1" then
         successes = successes + 1
         return
      end
      key = "code_" .. (code or "none")
   end
   nonsuccess = nonsuccess + 1
   codes[key] = (codes[key] or 0) + 1
end

local function encode(value)
   local kind = type(value)
   if kind == "table" then
      local parts = {}
      for k, v in pairs(value) do
         table.insert(parts, string.format("%q:%s", tostring(k), encode(v)))
      end
      return "{" .. table.concat(parts, ",") .. "}"
   elseif kind == "number" then
      if value ~= value or value == math.huge or value == -math.huge then
         return "null"
      end
      return string.format("%.17g", value)
   elseif kind == "string" then
      return string.format("%q", value)
   elseif kind == "boolean" then
      return tostring(value)
   end
   return "null"
end

function done(summary, latency, per_thread_rate)
   local result = {
      duration_us = summary.duration,
      requests = summary.requests,
      bytes = summary.bytes,
      errors = {
         connect = summary.errors.connect,
         read = summary.errors.read,
         write = summary.errors.write,
         status = summary.errors.status,
         timeout = summary.errors.timeout,
      },
      latency_us = {
         min = latency.min,
         max = latency.max,
         mean = latency.mean,
         stdev = latency.stdev,
         p50 = latency:percentile(50.0),
         p75 = latency:percentile(75.0),
         p90 = latency:percentile(90.0),
         p99 = latency:percentile(99.0),
         p999 = latency:percentile(99.9),
      },
      threads = {},
   }
   for index, thread in ipairs(threads) do
      result.threads[tostring(index)] = {
         tid = thread:get("tid"),
         loaded = thread:get("loaded"),
         issued = thread:get("issued"),
         wrapped = thread:get("wrapped"),
         responses = thread:get("responses"),
         successes = thread:get("successes"),
         nonsuccess = thread:get("nonsuccess"),
         codes = thread:get("codes"),
      }
   end
   io.write("WRK_RESULT " .. encode(result) .. "\n")
end
