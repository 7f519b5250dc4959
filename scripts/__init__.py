"""The Python helpers of the shell scripts, run as modules from the repository root (or with it on
PYTHONPATH, as scripts/recipe_lib.sh arranges): python -m scripts.score_translations, ..."""
