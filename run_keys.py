"""Manage the API's keys: python run_keys.py add NAME --scope S ... | rotate NAME | retire NAME | remove NAME | list."""

from __future__ import annotations

import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Manage the search API's admin keys, kept hashed in the keys file (IMAGESEARCH_API_KEYS_FILE, "
                    "default checkpoints/api_keys.json). A running API reads changes at its next request: no restart.")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="make a new key (printed once, never stored)")
    add.add_argument("name", help="what logs call the key, e.g. shoes-merchant")
    add.add_argument("--scope", action="append", required=True, metavar="SCOPE",
                     help="admin, write:<model> or read:analytics (repeatable)")
    rotate = sub.add_parser("rotate", help="a new key with NAME's scopes; the old one stays valid until `retire`")
    rotate.add_argument("name")
    retire = sub.add_parser("retire", help="remove every key of NAME but the newest (after a rotation)")
    retire.add_argument("name")
    remove = sub.add_parser("remove", help="remove NAME's keys (or one of them, --id)")
    remove.add_argument("name")
    remove.add_argument("--id", dest="key_id", help="only the key with this id (see list)")
    sub.add_parser("list", help="every key: name, id, scopes, created (never the key)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from core.config import load_settings
    from core.errors import ImageSearchError
    from core.keys import KeyFile

    try:
        keys = KeyFile(load_settings().keys_path)
        if args.command in ("add", "rotate"):
            plain, entry = keys.add(args.name, args.scope) if args.command == "add" else keys.rotate(args.name)
            print(f"key {entry.name} (id {entry.id}, scopes {', '.join(sorted(entry.scopes))}):\n{plain}\n"
                  f"it is shown only now; send it in header X-API-Key. Stored hashed in {keys.path}")
        elif args.command in ("retire", "remove"):
            gone = keys.retire(args.name) if args.command == "retire" else keys.remove(args.name, args.key_id)
            print(f"removed {len(gone)} key(s) of {args.name}" + "".join(f"\n  {k.id}" for k in gone)
                  + "\nthey stop working at the API's next request")
        else:
            for k in keys.read():
                print(f"{k.name:<24} {k.id}  {', '.join(sorted(k.scopes)):<32} {k.created_at}")
    except ImageSearchError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
