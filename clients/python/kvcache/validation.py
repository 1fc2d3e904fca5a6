"""The server's input rules, checked before a request is sent, raising the
exception and message the server would answer with (src/store/validation.h,
src/api/request_body.cc). A request that would be refused costs no round trip,
and a batch is refused whole, as the server refuses it (all or nothing)."""

from .errors import (EmptyKey, InvalidKey, InvalidTTL, InvalidValue, KeyNotAscii, KeyTooLong, ValueNotAscii,
                     ValueTooLong)

MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 256
MAX_TTL_SECONDS = 2147483647
MAX_BATCH_ITEMS = 1000  # per request; the client splits larger batches
MAX_BODY_BYTES = 65536  # a request body's limit; batches are split to fit


def key_error(key):
    """(exception class, message) for a key the server refuses, else None."""
    if not isinstance(key, str):
        return InvalidKey, "key must be a string"
    if not key:
        return EmptyKey, "key must not be empty"
    if key.isascii():
        if len(key) > MAX_KEY_BYTES:
            return KeyTooLong, "key exceeds 256 characters"
        return None
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return KeyTooLong, "key exceeds 256 characters"
    return KeyNotAscii, "key must be ASCII"


def value_error(value):
    if not isinstance(value, str):
        return InvalidValue, "value must be a string"
    if value.isascii():
        if len(value) > MAX_VALUE_BYTES:
            return ValueTooLong, "value exceeds 256 characters"
        return None
    if len(value.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES:
        return ValueTooLong, "value exceeds 256 characters"
    return ValueNotAscii, "value must be ASCII"


def ttl_error(ttl):
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL_SECONDS:
        return InvalidTTL, f"ttl must be an integer between 0 and {MAX_TTL_SECONDS}"
    return None


def check_key(key):
    error = key_error(key)
    if error:
        raise error[0](error[1])


def check_item(key, value, ttl=None, prefix=""):
    """Checks in the server's order: key, value, ttl. `prefix` is "items[i]: " in a batch."""
    error = key_error(key) or value_error(value) or ttl_error(ttl)
    if error:
        raise error[0](prefix + error[1])


def check_keys(keys):
    for i, key in enumerate(keys):
        error = key_error(key)
        if error:
            raise error[0](f"keys[{i}]: {error[1]}")


def check_items(items):
    """items: a sequence of (key, value) or (key, value, ttl)."""
    for i, item in enumerate(items):
        check_item(*item, prefix=f"items[{i}]: ")
