"""The one exception a request handler raises for a bad request: a 4xx JSON answer."""


class RequestError(Exception):
    """A request the server cannot answer as asked.

    ``status`` (4xx), ``code`` (a stable word a client can test: ``malformed_json``,
    ``wrong_type``, ``unknown_field``, ``bad_sample``, ``unknown_mode``, ``bad_topn``,
    ``body_too_large``, ``unknown_key``, ``index_missing``, ...) and a one-line
    ``message``; ``sample`` is the position of the sample at fault, if any;
    ``close``: the connection cannot carry another request (its body was not
    all read), so the answer closes it.
    """

    def __init__(self, status, code, message, sample=None, close=False):
        Exception.__init__(self, message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.sample = sample
        self.close = bool(close)

    def body(self):
        err = {"code": self.code, "message": self.message}
        if self.sample is not None:
            err["sample"] = self.sample
        return {"error": err}
