-- Replays the POST requests of a file, one per line, in order; each request once.
-- A line is tab-separated: path, header name and value pairs, then the body.
-- Usage: wrk -t1 ... -s replay.lua URL -- FILE
-- When the file runs out it starts again and counts a wrap (the caller treats a
-- wrapped run of unique requests as invalid). done() prints one line:
-- BENCH {"requests": ..., "duration_us": ..., "wrapped": ..., "statuses": {...}, "errors": {...}}

local function split(line)
  local fields, start = {}, 1
  while true do
    local tab = string.find(line, "\t", start, true)
    if not tab then
      fields[#fields + 1] = string.sub(line, start)
      return fields
    end
    fields[#fields + 1] = string.sub(line, start, tab - 1)
    start = tab + 1
  end
end

requests_ = {}
index = 0
wrapped = 0
statuses = {}

function init(args)
  for line in io.lines(args[1]) do
    if #line > 0 then
      local fields = split(line)
      local headers = {}
      for i = 2, #fields - 1, 2 do
        headers[fields[i]] = fields[i + 1]
      end
      requests_[#requests_ + 1] = wrk.format("POST", fields[1], headers, fields[#fields])
    end
  end
  if #requests_ == 0 then
    error("no request in " .. args[1])
  end
end

function request()
  index = index + 1
  if index > #requests_ then
    index = 1
    wrapped = wrapped + 1
  end
  return requests_[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  local total_wrapped, counts = 0, {}
  for _, thread in ipairs(threads) do
    total_wrapped = total_wrapped + thread:get("wrapped")
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    parts[#parts + 1] = string.format('"%d": %d', status, n)
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "wrapped": %d, "statuses": {%s}, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_p50_us": %d, "latency_p99_us": %d}\n',
    summary.requests, summary.duration, total_wrapped, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
