"""Every failure the client raises: one base class, one subclass per kind.

A server's error answer becomes the exception of its status and message, the
message kept as the server wrote it ("key exceeds 256 characters"). The same
exceptions, with the same messages, are raised before any request is sent for
input the server would refuse (validation.py).
"""


class KvcacheError(Exception):
    """Base class. `message` is the server's (or the client's) sentence,
    `status` the HTTP status (None when no answer came), `node` the URL asked."""

    def __init__(self, message, status=None, node=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.node = node

    def __str__(self):
        where = f" ({self.node})" if self.node else ""
        code = f"{self.status} " if self.status else ""
        return f"{code}{self.message}{where}"


class BadRequest(KvcacheError):
    """400: the request was refused as it is; sending it again will not help."""


class InvalidKey(BadRequest):
    """The key is missing, empty, too long or not ASCII."""


class EmptyKey(InvalidKey):
    """'key must not be empty'."""


class KeyTooLong(InvalidKey):
    """'key exceeds 256 characters' (bytes, after JSON unescaping)."""


class InvalidValue(BadRequest):
    """The value is missing, too long or not ASCII."""


class ValueTooLong(InvalidValue):
    """'value exceeds 256 characters'."""


class NotAscii(BadRequest):
    """'key must be ASCII' or 'value must be ASCII'."""


class KeyNotAscii(NotAscii, InvalidKey):
    """'key must be ASCII'."""


class ValueNotAscii(NotAscii, InvalidValue):
    """'value must be ASCII'."""


class InvalidTTL(BadRequest):
    """'ttl must be an integer between 0 and 2147483647'."""


class TooManyItems(BadRequest):
    """A batch over the server's 1,000 items (the client splits larger ones itself)."""


class PayloadTooLarge(KvcacheError):
    """413: the body is over the server's 64 KiB."""


class Unauthorized(KvcacheError):
    """401: 'missing bearer token' or 'invalid bearer token'."""


class NotFound(KvcacheError):
    """404 for something that is not a key: an unknown endpoint, snapshots off."""


class SnapshotInProgress(KvcacheError):
    """409: 'A snapshot is already being written.'"""


class ServerError(KvcacheError):
    """A 5xx other than 503, or an answer the client cannot read."""


class Unavailable(KvcacheError):
    """No answer from the node: connection refused, reset or closed unanswered,
    or its circuit breaker open with nowhere else to go."""


class Overloaded(Unavailable):
    """503: the node is short of connection memory, has too many connections,
    or is shutting down. Counts as a failure for the node's circuit breaker."""


class Timeout(Unavailable, TimeoutError):
    """No complete answer within the client's timeout (connect, send and receive
    together); the request may or may not have been applied."""


_BY_MESSAGE = {
    "key must not be empty": EmptyKey,
    "key is required": InvalidKey,
    "key must be a string": InvalidKey,
    "key exceeds 256 characters": KeyTooLong,
    "key must be ASCII": KeyNotAscii,
    "value is required": InvalidValue,
    "value must be a string": InvalidValue,
    "value exceeds 256 characters": ValueTooLong,
    "value must be ASCII": ValueNotAscii,
    "ttl must be an integer between 0 and 2147483647": InvalidTTL,
}


def error_for(status, message, node=None):
    """The exception for a server's error answer."""
    if status == 400:
        # a batch prefixes the item: "keys[3]: key exceeds 256 characters"
        tail = message.rsplit(": ", 1)[-1] if message.startswith(("keys[", "items[")) else message
        cls = _BY_MESSAGE.get(tail)
        if cls is None:
            cls = TooManyItems if message.startswith("too many ") else BadRequest
        return cls(message, status, node)
    cls = {401: Unauthorized, 404: NotFound, 409: SnapshotInProgress, 413: PayloadTooLarge,
           503: Overloaded}.get(status)
    if cls is None:
        cls = BadRequest if 400 <= status < 500 else ServerError
    return cls(message, status, node)
