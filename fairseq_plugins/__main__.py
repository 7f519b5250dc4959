"""``python -m fairseq_plugins`` prints the user-dir's absolute path, for ``--user-dir`` from any directory:

    fairseq-train DATA --user-dir "$(python -m fairseq_plugins)" --criterion encouraging_ls ...
"""
from pathlib import Path

if __name__ == "__main__":
    print(Path(__file__).resolve().parent)
