-- wrk script: POST a valid GTM event to /salesforce (demo client), with a unique eventId
-- per request so every request is a new stored record (an idempotent one, whose key the
-- store keeps in memory).
-- `wrk … -s bench/ingest-post.lua URL -- no-event-id` posts the same events without
-- `eventId`, the load of issue 14's first table: each is still a new stored record, with
-- a random id and no key kept (scripts/bench-cpu: BENCH_NO_EVENT_ID=1).
local counter = 0
local thread_id = 0
local threads = {}
local with_event_id = true

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  with_event_id = args[1] ~= "no-event-id"
end

function request()
  counter = counter + 1
  local event_id = ""
  if with_event_id then
    event_id = string.format(',"eventId":"bench-%d-%d-%d"', tid, counter, math.random(1, 1000000000))
  end
  local body = string.format(
    '{"clientId":"demo-salesforce","email":"shopper%d@example.com","eventType":"product_view","productId":"SKU-%d","productName":"Tenis Corrida","productPrice":199.9,"productUrl":"https://shop.example/p/%d"%s}',
    counter % 1000, counter % 500, counter % 500, event_id)
  return wrk.format(nil, "/salesforce", nil, body)
end
