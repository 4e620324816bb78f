"""Generates (once) and imports the Python stubs for echo.proto.

Stubs are not checked in so they always match the installed grpcio-tools and
protobuf runtime. They are cached per proto content in the temp dir; a fresh
directory is renamed into place so concurrent starters never see half a stub.
"""

import hashlib
import importlib
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.join(HERE, "echo.proto")


def load():
    """Returns (echo_pb2, echo_pb2_grpc)."""
    with open(PROTO, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    out = os.path.join(tempfile.gettempdir(), f"trefoil-grpc-stubs-{digest}")
    if not os.path.isfile(os.path.join(out, "echo_pb2_grpc.py")):
        _generate(out)
    if out not in sys.path:
        sys.path.insert(0, out)
    return importlib.import_module("echo_pb2"), importlib.import_module("echo_pb2_grpc")


def _generate(out):
    from grpc_tools import protoc  # imported late: only needed on first run

    staging = tempfile.mkdtemp(prefix="trefoil-grpc-stubs-")
    try:
        rc = protoc.main([
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={staging}",
            f"--grpc_python_out={staging}",
            PROTO,
        ])
        if rc != 0:
            raise RuntimeError(f"grpc_tools.protoc failed with {rc} for {PROTO}")
        try:
            os.rename(staging, out)
        except OSError:
            # Another process won the race; its stubs are identical.
            if not os.path.isfile(os.path.join(out, "echo_pb2_grpc.py")):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
