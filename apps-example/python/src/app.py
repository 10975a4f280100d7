"""greeter-py: a Steelmesh example app in Python (componentize-py).

Targets the `steelmesh:app/app` world (wit/app.wit): it exports
`wasi:http/incoming-handler` and uses the platform services:

- `GET /`        -> "Hello from Python, <name>!" with <name> the wasi:config
                    key `name` (default "world" when the key is missing).
- `POST /visits` -> atomically increments the key-value counter `visits` in
                    bucket "" and answers the new value as decimal text.
- `GET /visits`  -> the current value of `visits` (0 when missing).

Each request logs one `info` record through wasi:logging.
"""

from wit_world import exports
from wit_world.imports import atomics, logging
from wit_world.imports import wasi_config_store as config
from wit_world.imports import wasi_keyvalue_store as store
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method,
    Method_Get,
    Method_Post,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Err, Ok

APP = "greeter-py"
COUNTER = "visits"


def method_name(method: Method) -> str:
    # Method_Other carries its name; the others are named by their class.
    value = getattr(method, "value", None)
    if isinstance(value, str):
        return value
    return type(method).__name__.removeprefix("Method_").upper()


def respond(response_out: ResponseOutparam, status: int, text: str) -> None:
    """Send a complete `text/plain` response."""
    body_bytes = text.encode("utf-8")
    headers = Fields.from_list(
        [
            ("content-type", b"text/plain; charset=utf-8"),
            ("content-length", str(len(body_bytes)).encode("ascii")),
        ]
    )
    response = OutgoingResponse(headers)
    response.set_status_code(status)
    body = response.body()
    ResponseOutparam.set(response_out, Ok(response))
    # The stream is a child of the body: drop it (leave the `with`) before
    # finishing the body.
    with body.write() as stream:
        for start in range(0, len(body_bytes), 4096):
            stream.blocking_write_and_flush(body_bytes[start : start + 4096])
    OutgoingBody.finish(body, None)


def greeting() -> str:
    name = config.get("name")  # a missing key is `none`, not an error
    return f"Hello from Python, {name if name is not None else 'world'}!"


def current_visits() -> int:
    with store.open("") as bucket:
        value = bucket.get(COUNTER)
    if value is None:
        return 0
    return int(value.decode("ascii").strip() or "0")


def add_visit() -> int:
    with store.open("") as bucket:
        return atomics.increment(bucket, COUNTER, 1)


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        method = request.method()
        path = request.path_with_query() or "/"
        route = path.split("?", 1)[0]
        try:
            if isinstance(method, Method_Get) and route == "/":
                status, text = 200, greeting()
            elif isinstance(method, Method_Get) and route == "/visits":
                status, text = 200, str(current_visits())
            elif isinstance(method, Method_Post) and route == "/visits":
                status, text = 200, str(add_visit())
            elif route in ("/", "/visits"):
                status, text = 405, "method not allowed\n"
            else:
                status, text = 404, "not found\n"
        except Err as e:
            status, text = 500, f"platform error: {e.value!r}\n"
        logging.log(
            logging.Level.INFO,
            APP,
            f"{method_name(method)} {path} -> {status}",
        )
        respond(response_out, status, text)
