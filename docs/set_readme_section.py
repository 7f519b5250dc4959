"""Replaces the body of one `<!-- section: NAME -->` block of README.md with a file's text."""
import pathlib
import re
import sys

name, body_file = sys.argv[1], sys.argv[2]
readme = pathlib.Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
pattern = re.compile(rf"(<!-- section: {re.escape(name)} -->\n)(.*?)(<!-- /section: {re.escape(name)} -->)", re.S)
if not pattern.search(text):
    sys.exit(f"README.md has no section {name!r}")
body = pathlib.Path(body_file).read_text().rstrip("\n") + "\n"
readme.write_text(pattern.sub(lambda m: m.group(1) + body + m.group(3), text))
