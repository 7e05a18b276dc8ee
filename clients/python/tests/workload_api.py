"""A SPIFFE Workload API server for the tests: gRPC over a Unix socket, the services of
`workload.proto` as py-spiffe ships them generated (`spiffe._proto.workload_pb2_grpc`), serving
the X509-SVID it is given on `FetchX509SVID` streams and pushing a new one on every open stream
when rotated (what a SPIRE agent does before an SVID expires). It refuses calls without the
`workload.spiffe.io: true` header, as the Workload API standard requires."""

from __future__ import annotations

import os
import tempfile
import threading
from concurrent import futures
from pathlib import Path
from typing import Any, Iterator

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from spiffe._proto import workload_pb2, workload_pb2_grpc  # type: ignore[import-not-found, unused-ignore]

from fedgate_agent import X509Svid


class WorkloadApi(workload_pb2_grpc.SpiffeWorkloadAPIServicer):  # type: ignore[misc]
    def __init__(self, svid: X509Svid, bundle: x509.Certificate):
        self._svid = svid
        self._bundle = bundle.public_bytes(serialization.Encoding.DER)
        self._version = 0
        self._cond = threading.Condition()
        self._aborts = 0
        self._abort_code = grpc.StatusCode.UNAVAILABLE
        self.calls: list[str | None] = []
        """The `workload.spiffe.io` header of each FetchX509SVID call."""
        self._dir = Path(tempfile.mkdtemp(prefix="wlapi-"))  # short: a socket path is <= 107 bytes
        self.path = self._dir / "agent.sock"
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"unix:{self.path}")

    @property
    def address(self) -> str:
        return f"unix://{self.path}"

    def start(self) -> WorkloadApi:
        self._server.start()
        return self

    def stop(self) -> None:
        self.fail_streams(grpc.StatusCode.UNAVAILABLE)
        self._server.stop(grace=0).wait(5)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.rmdir(self._dir)

    def rotate(self, svid: X509Svid) -> None:
        """Serves ``svid`` from now on and pushes it on every open stream."""
        with self._cond:
            self._svid = svid
            self._version += 1
            self._cond.notify_all()

    def fail_streams(self, code: grpc.StatusCode) -> None:
        """Ends every open stream with ``code`` (new calls are served again)."""
        with self._cond:
            self._aborts += 1
            self._abort_code = code
            self._cond.notify_all()

    def _response(self) -> Any:
        s = self._svid
        der = b"".join(c.public_bytes(serialization.Encoding.DER) for c in s.cert_chain)
        key = s.signing_key.private_key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return workload_pb2.X509SVIDResponse(
            svids=[workload_pb2.X509SVID(spiffe_id=s.spiffe_id, x509_svid=der, x509_svid_key=key, bundle=self._bundle)]
        )

    def FetchX509SVID(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:  # noqa: N802
        header = dict(context.invocation_metadata()).get("workload.spiffe.io")
        self.calls.append(header)
        if header != "true":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request")
        sent = -1
        with self._cond:
            aborts = self._aborts
        while context.is_active():
            with self._cond:
                if self._aborts != aborts:
                    context.abort(self._abort_code, "stream ended by the test")
                if self._version == sent:
                    self._cond.wait(0.2)
                    continue
                sent, resp = self._version, self._response()
            yield resp
