"""hello-py: the smallest wasi:http/proxy app in Python, for bench/heavy.sh.

Answers every request with "Hello, world!\n". It targets the standard proxy
world only, so `wasmtime serve` runs the same file as meshd.
"""

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok

BODY = b"Hello, world!\n"


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        headers = Fields.from_list(
            [
                ("content-type", b"text/plain"),
                ("content-length", str(len(BODY)).encode("ascii")),
            ]
        )
        response = OutgoingResponse(headers)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        stream = body.write()
        stream.blocking_write_and_flush(BODY)
        stream.__exit__(None, None, None)
        OutgoingBody.finish(body, None)
