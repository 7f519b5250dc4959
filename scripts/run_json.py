"""A run's record, RUN_DIR/run.json (a flat JSON object written by scripts/train.sh). Usage:

    python -m scripts.run_json write PATH key=value ...   values that parse as JSON numbers/booleans
                                                          are stored as such, the rest as strings
    python -m scripts.run_json read PATH key ...          prints the values, one a line

Reading a file that is not such an object, or lacks a key, is a one-line error naming the file (and
the key), status 2.
"""
import json
import sys

from scripts.atomic_io import write_text_atomically


class RunRecordError(Exception):
    """Bad input: reported as one line naming the file."""


def parse_value(text):
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, (int, float, bool)) or value is None else text


def write_record(path, pairs):
    record = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise RunRecordError(f"argument {pair!r} is not key=value")
        record[key] = parse_value(value)
    write_text_atomically(path, json.dumps(record, indent=2) + "\n")


def read_fields(path, keys):
    """The values of `keys` in the run record at `path`, as one-line strings."""
    hint = "it is written by scripts/train.sh; train again or restore it"
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except FileNotFoundError:
        raise RunRecordError(f"{path}: not found; RUN_DIR must be a directory made by scripts/train.sh") from None
    except (UnicodeDecodeError, ValueError) as error:
        raise RunRecordError(f"{path}: not valid JSON ({error}); {hint}") from None
    if not isinstance(record, dict):
        raise RunRecordError(f"{path}: expected a JSON object, got {type(record).__name__}; {hint}")
    values = []
    for key in keys:
        value = record.get(key)
        if value is None or value == "" or isinstance(value, (dict, list)) or "\n" in str(value):
            raise RunRecordError(f"{path}: field '{key}' is missing or not a one-line value (got {value!r}); {hint}")
        values.append(str(value).lower() if isinstance(value, bool) else str(value))
    return values


def main(argv):
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if len(argv) < 2 or argv[0] not in ("read", "write"):
        print(__doc__, file=sys.stderr)
        return 2
    command, path, rest = argv[0], argv[1], argv[2:]
    try:
        if command == "write":
            write_record(path, rest)
        else:
            print("\n".join(read_fields(path, rest)))
    except (RunRecordError, OSError) as error:
        print(f"error: run_json: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
