"""python -m data_prep: the command line (data_prep/cli.py)."""
import sys

from data_prep.cli import main

sys.exit(main())
