-- wrk script: POST a valid GTM event to /salesforce (demo client), with a unique eventId
-- per request so every request is a new stored record.
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread_id = thread_id + 1
  thread:set("tid", thread_id)
  table.insert(threads, thread)
end

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"clientId":"demo-salesforce","email":"shopper%d@example.com","eventType":"product_view","productId":"SKU-%d","productName":"Tenis Corrida","productPrice":199.9,"productUrl":"https://shop.example/p/%d","eventId":"bench-%d-%d-%d"}',
    counter % 1000, counter % 500, counter % 500, tid, counter, math.random(1, 1000000000))
  return wrk.format(nil, "/salesforce", nil, body)
end
