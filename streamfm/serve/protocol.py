"""uvicorn's HTTP protocol with a deadline for a request's headers.

uvicorn has no timeout for a request that never finishes its headers: its
keep-alive timer is reset by every byte received, so a client that sends
``POST / HTTP/1.1\\r\\nHost: x\\r\\n`` and then nothing (or a byte a minute,
slowloris) holds a connection, a socket and a parser for ever; enough of
them and the server accepts no more. The body has its own deadline in the
app (``app.read_json``, ``--body-timeout``); this one covers what comes
before the app sees a request.

The clock starts when a connection opens and when the first byte of a
request arrives; it stops when the request's headers are complete. A
connection still short of whole headers when it rings is closed (nothing
can be answered: there is no request yet). An idle keep-alive connection
(no byte since the last answer) is left to uvicorn's keep-alive timeout, so
a client's pooled connection is never closed under its next request.
"""


def with_header_timeout(base, seconds):
    """A subclass of uvicorn protocol class ``base`` (``HttpToolsProtocol`` or
    ``H11Protocol``) that closes a connection whose request headers are not
    complete ``seconds`` after the connection opened or the request began.

    It relies on what both classes share: ``loop``, ``transport``, and
    ``cycle`` (the request being answered; replaced when a new request's
    headers are complete, ``response_complete`` once answered).
    """
    seconds = float(seconds)

    class HeaderDeadline(base):
        _header_timer = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data):
            if self._header_timer is None and self._awaiting_headers():
                self._arm_header_timer()  # a new request begins
            super().data_received(data)
            if self._header_timer is not None and not self._awaiting_headers():
                self._cancel_header_timer()

        def connection_lost(self, exc):
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _awaiting_headers(self):
            return self.cycle is None or self.cycle.response_complete

        def _arm_header_timer(self):
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(seconds, self._header_timeout)

        def _cancel_header_timer(self):
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self):
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

    HeaderDeadline.__name__ = HeaderDeadline.__qualname__ = base.__name__ + "WithHeaderTimeout"
    return HeaderDeadline
