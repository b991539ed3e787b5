"""A gRPC proxy in front of a real server (the Pub/Sub emulator) that fails chosen calls.

A client pointed at `proxy.host` talks to the upstream server through it; after
`proxy.fail("google.pubsub.v1.Publisher/Publish", grpc.StatusCode.UNKNOWN, "Stream removed")`
the next Publish is answered with that gRPC status, as a Google frontend answers
in a bad period, without reaching the upstream; every other call is forwarded
as it is (request and response bytes, metadata, what is left of its deadline).
Unary calls only (Publish, the admin calls), which is all a publisher makes.
"""

import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc


class FaultProxy:
    """`FaultProxy(upstream_host)`: listening on `host` (loopback) until `stop()`."""

    def __init__(self, upstream: str) -> None:
        self._channel = grpc.insecure_channel(upstream)
        self._faults: dict[str, deque[tuple[grpc.StatusCode, str]]] = {}
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # method ("package.Service/Method") → calls received
        self._server = grpc.server(ThreadPoolExecutor(8, thread_name_prefix="grpc-faults"))
        self._server.add_generic_rpc_handlers([_Forward(self)])
        self.host = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def fail(self, method: str, code: grpc.StatusCode, details: str = "", times: int = 1) -> None:
        """The next `times` calls of `method` ("package.Service/Method") answer `code`."""
        with self._lock:
            self._faults.setdefault(method, deque()).extend([(code, details)] * times)

    def _next_fault(self, method: str) -> tuple[grpc.StatusCode, str] | None:
        with self._lock:
            self.calls[method] += 1
            queued = self._faults.get(method)
            return queued.popleft() if queued else None

    def stop(self) -> None:
        self._server.stop(grace=None)
        self._channel.close()


class _Forward(grpc.GenericRpcHandler):
    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        full = details.method  # "/package.Service/Method"
        upstream = self._proxy._channel.unary_unary(full)  # bytes in, bytes out

        def call(request: bytes, context: grpc.ServicerContext) -> Any:
            fault = self._proxy._next_fault(full.lstrip("/"))
            if fault:
                context.abort(*fault)
            try:
                return upstream(request, metadata=context.invocation_metadata(), timeout=context.time_remaining())
            except grpc.RpcError as exc:
                context.abort(exc.code(), exc.details())

        return grpc.unary_unary_rpc_method_handler(call)
