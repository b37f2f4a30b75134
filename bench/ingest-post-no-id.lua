-- wrk script: POST a valid GTM event to /salesforce (demo client) without `eventId`, the
-- load of issue 14's table: each request is a new stored record with a random id, and
-- the store keeps no key for it (only idempotent records are checked for duplicates).
-- scripts/bench-cpu uses it with BENCH_SCRIPT=bench/ingest-post-no-id.lua.
local counter = 0

function init(args)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  counter = counter + 1
  local body = string.format(
    '{"clientId":"demo-salesforce","email":"shopper%d@example.com","eventType":"product_view","productId":"SKU-%d","productName":"Tenis Corrida","productPrice":199.9,"productUrl":"https://shop.example/p/%d"}',
    counter % 1000, counter % 500, counter % 500)
  return wrk.format(nil, "/salesforce", nil, body)
end
