#!/usr/bin/env python3
"""Generate the Python gRPC stubs for proto/ferry/v1/*.proto into proto/v1/.

The stubs are committed, so installing the client needs no grpcio-tools. The descriptors keep their
canonical names (``ferry/v1/translation.proto``, package ``ferry.v1``) for server reflection; only the
``*_pb2_grpc.py`` import of its message module is made relative, so the files import as
``ferry.proto.v1.translation_pb2``.

    python scripts/gen_protos.py           # regenerate
    python scripts/gen_protos.py --check   # exit 1 if the committed stubs are stale
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
PROTO_DIR = PROTO_ROOT / "ferry" / "v1"
OUT_DIR = PROTO_ROOT / "v1"
SUFFIXES = ("_pb2.py", "_pb2_grpc.py", "_pb2.pyi")


def generate(dest: Path) -> list[Path]:
    """Run protoc for every .proto in PROTO_DIR and write the stubs (imports fixed) into ``dest``."""
    from grpc_tools import protoc

    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files in {PROTO_DIR}")
    include = Path(protoc.__file__).parent / "_proto"  # google/protobuf/*.proto
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *(str(p.relative_to(PROTO_ROOT)) for p in protos),
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed (see the messages above)")
        produced = Path(tmp) / "ferry" / "v1"
        written = []
        for src in sorted(produced.iterdir()):
            if not src.name.endswith(SUFFIXES):
                continue
            text = src.read_text()
            # "from ferry.v1 import x_pb2 as ..." -> "from . import x_pb2 as ..."
            text = re.sub(r"^from ferry\.v1 import ", "from . import ", text, flags=re.MULTILINE)
            out = dest / src.name
            out.write_text(text)
            written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the committed stubs differ")
    args = parser.parse_args(argv)
    if not args.check:
        for path in generate(OUT_DIR):
            print(f"wrote {path.relative_to(ROOT)}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p.read_text() for p in generate(Path(tmp))}
    committed = {p.name: p.read_text() for p in OUT_DIR.iterdir() if p.name.endswith(SUFFIXES)}
    stale = sorted(n for n in fresh.keys() | committed.keys() if fresh.get(n) != committed.get(n))
    if stale:
        print(
            f"generated protos are out of date: {', '.join(stale)} in {OUT_DIR.relative_to(ROOT)}; "
            "run `python scripts/gen_protos.py` and commit the result",
            file=sys.stderr,
        )
        return 1
    print(f"generated protos in {OUT_DIR.relative_to(ROOT)} are up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
