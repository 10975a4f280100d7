// greeter-js: a Steelmesh example app in JavaScript (ComponentizeJS /
// StarlingMonkey).
//
// Targets the `steelmesh:app/app` world (wit/app.wit) as it is: the module
// exports `incomingHandler`, which ComponentizeJS binds to the world's
// `wasi:http/incoming-handler@0.2.12` export, and uses the world's imports
// directly. (StarlingMonkey's `addEventListener('fetch', ...)` style cannot
// be used with this world: the engine's built-in handler is exported at its
// own wasi:http version, 0.2.10, which does not match the world's 0.2.12, and
// componentizing fails.)
//
// - `GET /`        -> "Hello from JavaScript, <name>!" with <name> the
//                     wasi:config key `name` (default "world" when missing).
// - `POST /visits` -> atomically increments the key-value counter `visits` in
//                     bucket "" and answers the new value as decimal text.
// - `GET /visits`  -> the current value of `visits` (0 when missing).
//
// Each request logs one `info` record through wasi:logging.

import {
  Fields,
  OutgoingBody,
  OutgoingResponse,
  ResponseOutparam,
} from 'wasi:http/types@0.2.12';
import { get as configGet } from 'wasi:config/store@0.2.0-rc.1';
import { open } from 'wasi:keyvalue/store@0.2.0-draft';
import { increment } from 'wasi:keyvalue/atomics@0.2.0-draft';
import { log } from 'wasi:logging/logging@0.1.0-draft';

const APP = 'greeter-js';
const COUNTER = 'visits';
const encoder = new TextEncoder();
const decoder = new TextDecoder();
// Resource handles are released with this method (the bindings define it as
// `Symbol.dispose`, or `Symbol.for('dispose')` where the engine lacks it).
const dispose = Symbol.dispose || Symbol.for('dispose');

function greeting() {
  // A missing key is `none` (undefined here), not an error.
  const name = configGet('name');
  return `Hello from JavaScript, ${name ?? 'world'}!`;
}

function withBucket(f) {
  const bucket = open('');
  try {
    return f(bucket);
  } finally {
    bucket[dispose]();
  }
}

function currentVisits() {
  const value = withBucket((bucket) => bucket.get(COUNTER)); // Uint8Array | undefined
  if (value === undefined) return 0n;
  const text = decoder.decode(value).trim();
  return text === '' ? 0n : BigInt(text);
}

function addVisit() {
  return withBucket((bucket) => increment(bucket, COUNTER, 1n)); // u64 -> BigInt
}

function route(method, path) {
  if (path === '/' && method === 'GET') return [200, greeting()];
  if (path === '/visits' && method === 'GET') return [200, String(currentVisits())];
  if (path === '/visits' && method === 'POST') return [200, String(addVisit())];
  if (path === '/' || path === '/visits') return [405, 'method not allowed\n'];
  return [404, 'not found\n'];
}

function respond(responseOut, status, text) {
  const bytes = encoder.encode(text);
  const headers = Fields.fromList([
    ['content-type', encoder.encode('text/plain; charset=utf-8')],
    ['content-length', encoder.encode(String(bytes.length))],
  ]);
  const response = new OutgoingResponse(headers);
  response.setStatusCode(status);
  const body = response.body();
  ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
  const stream = body.write();
  for (let start = 0; start < bytes.length; start += 4096) {
    stream.blockingWriteAndFlush(bytes.subarray(start, start + 4096));
  }
  // The stream is a child of the body: drop it before finishing the body.
  stream[dispose]();
  OutgoingBody.finish(body, undefined);
}

export const incomingHandler = {
  handle(request, responseOut) {
    const method = request.method();
    const methodName = method.tag === 'other' ? method.val : method.tag.toUpperCase();
    const pathWithQuery = request.pathWithQuery() ?? '/';
    const path = pathWithQuery.split('?', 1)[0];
    let status;
    let text;
    try {
      [status, text] = route(methodName, path);
    } catch (e) {
      // A `result` error from a platform call is thrown; its payload is the
      // WIT error variant.
      const payload = e && e.payload !== undefined ? JSON.stringify(e.payload) : String(e);
      [status, text] = [500, `platform error: ${payload}\n`];
    }
    log('info', APP, `${methodName} ${pathWithQuery} -> ${status}`);
    respond(responseOut, status, text);
  },
};
