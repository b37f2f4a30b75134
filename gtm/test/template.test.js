// The template, tested in Node (node --test gtm/test): the pixel URL for each CRM, no
// request without an email, gtmOnSuccess / gtmOnFailure, a deterministic eventId, and a
// template file GTM can import (sections, JSON, permissions).
'use strict';
const test = require('node:test');
const assert = require('node:assert/strict');
const { sections, run, eventOf } = require('./sandbox');

const base = {
  endpoint: 'https://connect.example.com',
  route: 'responsys',
  clientId: 'loja-exemplo',
  eventType: 'product_view',
  email: 'Ana@Example.com',
  productId: 'SKU-1',
  productPrice: '199,90',
  properties: [{ name: 'cartId', value: 'c-1' }],
};

test('the template has every section GTM expects, with valid JSON', () => {
  const s = sections();
  for (const name of ['INFO', 'TEMPLATE_PARAMETERS', 'SANDBOXED_JS_FOR_WEB_TEMPLATE', 'WEB_PERMISSIONS', 'TESTS', 'NOTES']) {
    assert.ok(s[name] !== undefined && s[name].length > 0, `section ${name}`);
  }
  const info = JSON.parse(s.INFO);
  assert.equal(info.type, 'TAG');
  assert.deepEqual(info.containerContexts, ['WEB']);
  const params = JSON.parse(s.TEMPLATE_PARAMETERS);
  const names = [];
  const walk = (ps) => ps.forEach((p) => { names.push(p.name); if (p.subParams) walk(p.subParams); });
  walk(params);
  for (const n of ['endpoint', 'route', 'clientId', 'tid', 'eventType', 'email', 'productId', 'productName', 'productPrice', 'productUrl', 'productImage', 'properties', 'consent']) {
    assert.ok(names.includes(n), `parameter ${n}`);
  }
  const perms = JSON.parse(s.WEB_PERMISSIONS);
  const pixel = perms.find((p) => p.instance.key.publicId === 'send_pixel');
  assert.ok(pixel, 'send_pixel permission');
  const allowed = pixel.instance.param.find((p) => p.key === 'allowedUrls');
  assert.equal(allowed.value.string, 'specific', 'pixels only to the configured host');
  const urls = pixel.instance.param.find((p) => p.key === 'urls').value.listItem.map((i) => i.string);
  assert.deepEqual(urls, ['https://connect.example.com/*']);
  // The code requires only what the permissions grant.
  const used = [...s.SANDBOXED_JS_FOR_WEB_TEMPLATE.matchAll(/require\('([^']+)'\)/g)].map((m) => m[1]);
  assert.ok(!used.includes('injectScript') && !used.includes('sendHttpRequest'));
  assert.match(s.TESTS, /scenarios:/);
});

test('the pixel URL of each CRM carries the event', () => {
  for (const route of ['responsys', 'salesforce', 'rdstation']) {
    const data = { ...base, route };
    if (route === 'rdstation') { delete data.clientId; data.tid = 'GA4.100000000.200000000'; }
    const calls = run(data);
    assert.equal(calls.pixels.length, 1, route);
    const url = calls.pixels[0];
    assert.ok(url.startsWith(`https://connect.example.com/${route}/p?d=`), url);
    assert.match(url, /\?d=[A-Za-z0-9_-]+$/, 'base64url, no padding, nothing else in the query');
    const event = eventOf(url);
    assert.equal(event.email, 'Ana@Example.com');
    assert.equal(event.eventType, 'product_view');
    assert.equal(event.productId, 'SKU-1');
    assert.equal(event.productPrice, '199,90');
    assert.equal(event.cartId, 'c-1');
    if (route === 'rdstation') {
      assert.equal(event.tid, 'GA4.100000000.200000000');
      assert.equal(event.clientId, undefined);
    } else {
      assert.equal(event.clientId, 'loja-exemplo');
      assert.equal(event.tid, undefined);
    }
    assert.equal(calls.success, 1);
    assert.equal(calls.failure, 0);
  }
});

test('non-ASCII text survives the round trip', () => {
  const calls = run({ ...base, productName: 'Tênis Corrida 👟' });
  assert.equal(eventOf(calls.pixels[0]).productName, 'Tênis Corrida 👟');
});

test('no email, no request: gtmOnFailure', () => {
  for (const email of ['', undefined, null, 'not-an-email']) {
    const calls = run({ ...base, email });
    assert.equal(calls.pixels.length, 0, String(email));
    assert.equal(calls.failure, 1);
    assert.equal(calls.success, 0);
  }
});

test('a failed pixel calls gtmOnFailure', () => {
  const calls = run(base, { overrides: { sendPixel: (url, ok, fail) => fail() } });
  assert.equal(calls.failure, 1);
  assert.equal(calls.success, 0);
});

test('the eventId is the same for the same page event and differs otherwise', () => {
  const id = (dataLayer, data = base) => eventOf(run(data, { dataLayer }).pixels[0]).eventId;
  const page = { 'gtm.start': 1764590000000, 'gtm.uniqueEventId': 7 };
  assert.equal(id(page), 'GTM-TEST1-1764590000000-7-product_view');
  assert.equal(id(page), id({ ...page }), 'a tag firing twice for one event');
  assert.notEqual(id(page), id({ ...page, 'gtm.uniqueEventId': 8 }), 'another event');
  assert.notEqual(id(page), id({ ...page, 'gtm.start': 1764590000001 }), 'another page load');
  assert.notEqual(id(page), id(page, { ...base, eventType: 'add_to_cart' }), 'another tag on the event');
  assert.equal(id({}), undefined, 'without GTM keys, no eventId (never a random one)');
});

test('optional fields and extra properties are sent only when set', () => {
  const calls = run({ ...base, productName: '', consent: 'granted', properties: [{ name: 'email', value: 'x@y.z' }, { name: '', value: 'v' }] });
  const event = eventOf(calls.pixels[0]);
  assert.equal(event.productName, undefined);
  assert.equal(event.consent, 'granted');
  assert.equal(event.email, 'Ana@Example.com', 'a property cannot override a field');
  assert.equal(Object.keys(event).includes(''), false);
});
