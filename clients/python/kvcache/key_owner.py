"""Which node owns a key: HAProxy 2.6's consistent hashing as
deploy/haproxy/haproxy.cfg configures it (kvcache.Ring), on the command line.

    kvcache-key-owner --ids 1,2,3 KEY...            prints "<id> <key>" per key
    kvcache-key-owner --ids 1,2,3 --down 2 KEY...   with server 2 DOWN in HAProxy
"""

import argparse
import sys

from .ring import Ring


def _ids(text):
    try:
        return [int(i) for i in text.split(",") if i]
    except ValueError:
        raise argparse.ArgumentTypeError(f"ids are integers separated by commas: {text!r}") from None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="key_owner.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", required=True, type=_ids, help="server ids in haproxy.cfg, comma separated (1,2,3)")
    parser.add_argument("--down", type=_ids, default=[], help="ids HAProxy has DOWN, comma separated")
    parser.add_argument("--weight", type=int, default=100, help="server weight in haproxy.cfg (100)")
    parser.add_argument("keys", nargs="+")
    args = parser.parse_args(argv)
    try:
        ring = Ring(args.ids, args.weight)
    except ValueError as e:
        parser.error(str(e))
    down = frozenset(args.down)
    if not set(args.ids) - down:
        parser.error("every server is down")
    out = sys.stdout
    for key in args.keys:
        out.write(f"{ring.owner(key, down)} {key}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
