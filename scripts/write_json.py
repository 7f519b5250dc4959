#!/usr/bin/env python3
"""Writes a flat JSON object atomically: write_json.py PATH key=value ... (values that parse as JSON
numbers/booleans are stored as such, everything else as strings). Used by the shell scripts."""
import json
import sys

from atomic_io import write_text_atomically


def parse_value(text):
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def main(argv):
    if len(argv) < 1 or argv[0] in ("-h", "--help"):
        print(__doc__, file=sys.stderr)
        return 0 if argv else 2
    path, record = argv[0], {}
    for pair in argv[1:]:
        key, separator, value = pair.partition("=")
        if not separator:
            print(f"error: write_json.py: argument {pair!r} is not key=value", file=sys.stderr)
            return 2
        record[key] = parse_value(value)
    write_text_atomically(path, json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
