// Runs the template's sandboxed JavaScript in Node with mocked GTM APIs (`require`),
// the way GTM's own test runner does: the code is the ___SANDBOXED_JS_FOR_WEB_TEMPLATE___
// section of ../template.tpl, unchanged.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const TEMPLATE = path.join(__dirname, '..', 'template.tpl');

/** The template's sections by name (`___INFO___` → text). */
function sections(file = TEMPLATE) {
  const text = fs.readFileSync(file, 'utf8');
  const out = {};
  const re = /^___([A-Z_]+)___\s*$/gm;
  const marks = [];
  let m;
  while ((m = re.exec(text)) !== null) marks.push({ name: m[1], start: m.index, end: re.lastIndex });
  marks.forEach((mark, i) => {
    const next = marks[i + 1];
    out[mark.name] = text.slice(mark.end, next ? next.start : text.length).trim();
  });
  return out;
}

/**
 * Runs the sandboxed code with `data` and the mocked APIs. `overrides` replaces APIs
 * (e.g. a failing sendPixel); `dataLayer` holds the keys copyFromDataLayer reads.
 * Returns what happened: pixel URLs sent, success/failure calls, log lines.
 */
function run(data, { overrides = {}, dataLayer = { 'gtm.start': 1764590000000, 'gtm.uniqueEventId': 7 }, containerId = 'GTM-TEST1' } = {}) {
  const calls = { pixels: [], success: 0, failure: 0, logs: [], required: [] };
  const apis = {
    sendPixel: (url, onSuccess, onFailure) => {
      calls.pixels.push(url);
      if (onSuccess) onSuccess();
    },
    toBase64: (s) => Buffer.from(String(s), 'utf8').toString('base64'),
    JSON: { stringify: JSON.stringify, parse: JSON.parse },
    copyFromDataLayer: (key) => dataLayer[key],
    getContainerVersion: () => ({ containerId }),
    makeString: (v) => (v === undefined || v === null ? String(v) : String(v)),
    logToConsole: (...args) => calls.logs.push(args.join(' ')),
    ...overrides,
  };
  const code = sections().SANDBOXED_JS_FOR_WEB_TEMPLATE;
  const sandboxRequire = (name) => {
    calls.required.push(name);
    if (!(name in apis)) throw new Error(`the template requires ${name}, which the harness does not mock`);
    return apis[name];
  };
  const fullData = {
    ...data,
    gtmOnSuccess: () => { calls.success += 1; },
    gtmOnFailure: () => { calls.failure += 1; },
  };
  // eslint-disable-next-line no-new-func
  new Function('require', 'data', code)(sandboxRequire, fullData);
  return calls;
}

/** The event a pixel URL carries (its `d`, base64url JSON). */
function eventOf(url) {
  const d = new URL(url).searchParams.get('d');
  return JSON.parse(Buffer.from(d, 'base64url').toString('utf8'));
}

module.exports = { sections, run, eventOf, TEMPLATE };
