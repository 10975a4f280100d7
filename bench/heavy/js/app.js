// hello-js: the smallest wasi:http/proxy app in JavaScript (ComponentizeJS),
// for bench/heavy.sh. Answers every request with "Hello, world!\n". It
// targets the standard proxy world only, so `wasmtime serve` runs the same
// file as meshd. (Exports `incomingHandler` rather than a fetch listener for
// the reason apps-example/js/src/app.js gives.)

import { Fields, OutgoingBody, OutgoingResponse, ResponseOutparam } from 'wasi:http/types@0.2.12';

const BODY = new TextEncoder().encode('Hello, world!\n');
const dispose = Symbol.dispose || Symbol.for('dispose');

export const incomingHandler = {
  handle(_request, responseOut) {
    const headers = Fields.fromList([
      ['content-type', new TextEncoder().encode('text/plain')],
      ['content-length', new TextEncoder().encode(String(BODY.length))],
    ]);
    const response = new OutgoingResponse(headers);
    const body = response.body();
    ResponseOutparam.set(responseOut, { tag: 'ok', val: response });
    const stream = body.write();
    stream.blockingWriteAndFlush(BODY);
    stream[dispose]();
    OutgoingBody.finish(body, undefined);
  },
};
