"""The one way the scripts write their outputs: to a temporary name beside the target, renamed when
complete, so an interrupted run never leaves a half-written table, JSON or plot."""
import os


def write_text_atomically(path, text):
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = path + ".partial"
    with open(partial, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)
