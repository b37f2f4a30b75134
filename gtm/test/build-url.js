// Prints the pixel URL the template builds for: ENDPOINT ROUTE CLIENT_OR_TID EMAIL
// [EVENT_TYPE]. Used by the browser end-to-end test (tests/tests/e2e/gtm_browser.rs).
'use strict';
const { run } = require('./sandbox');

const [endpoint, route, who, email, eventType = 'product_view'] = process.argv.slice(2);
const data = { endpoint, route, email, eventType, productId: 'SKU-1' };
if (route === 'rdstation') data.tid = who; else data.clientId = who;
const calls = run(data);
if (calls.pixels.length !== 1) {
  console.error('the template sent no pixel', calls);
  process.exit(1);
}
console.log(calls.pixels[0]);
