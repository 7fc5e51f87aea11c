"""A loopback HTTP mirror of a directory, for the tests and the benchmarks."""

import contextlib
import functools
import http.server
import threading


@contextlib.contextmanager
def serve_directory(directory: str, handler_class=None):
    """Serves `directory` over HTTP on 127.0.0.1; yields the base URL."""
    handler_class = handler_class or http.server.SimpleHTTPRequestHandler

    class Quiet(handler_class):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=directory))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
