"""The embedded stack's S3 server: moto's S3 backend served by waitress.

    python -m consumers.devstack.s3_server --host 127.0.0.1 --port 9000

``python -m moto.server`` serves every AWS service moto fakes through werkzeug's
development server, which closes the connection after every response (it sends
``Connection: close`` whatever the protocol version) and starts a thread per
connection, and whose dispatcher scans moto's package folder and takes a global lock
on every request to pick the service. S3 and MinIO keep connections open, so the local
stack would exercise a connection pattern production never sees, at about twice the
server CPU per read (``python -m loadtest.s3_bench`` measures both). Here the S3
backend's own WSGI app runs under waitress: keep-alive, a fixed thread pool, S3 only.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

# Enough for several consumers' connection pools (max_concurrency each) plus the
# producers and the gateway; waitress's default of 100 would refuse the rest.
CONNECTION_LIMIT = 1000


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="moto's S3 backend on waitress")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    # Imported here: moto builds its backends on import, which --help need not wait for.
    import waitress
    from moto.moto_server.werkzeug_app import create_backend_app

    waitress.serve(
        create_backend_app("s3"),
        host=args.host,
        port=args.port,
        threads=args.threads,
        connection_limit=CONNECTION_LIMIT,
        ident="imagestream-s3",
        _quiet=True,
    )


if __name__ == "__main__":
    main()
