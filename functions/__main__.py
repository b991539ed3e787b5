"""Operator commands: `python -m functions status MESSAGE_ID`."""

import argparse
import json
import sys

from google.api_core import exceptions


def status(args) -> int:
    from functions import store

    message = store.get_message(args.message_id)
    if message is None:
        print(f"no message {args.message_id}", file=sys.stderr)
        return 1
    print(json.dumps(message.to_doc(), default=str, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m functions", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    show = commands.add_parser("status", help="print a message's document as JSON; exit 1 if it does not exist")
    show.add_argument("message_id")
    show.set_defaults(run=status)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (exceptions.GoogleAPIError, OSError) as exc:
        print(f"cannot reach Firestore ({type(exc).__name__}): is GOOGLE_CLOUD_PROJECT or FIRESTORE_EMULATOR_HOST right?", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
