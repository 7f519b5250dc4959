"""One module per corpus, each a subcommand of the command line. A recipe module defines NAME, HELP,
DESCRIPTION, DEFAULTS (its Settings defaults that differ from settings.Settings), OUT_DIR, CLEANING
(training-pair cleaning defaults, or None), ARCHIVES (from the registry), add_arguments(parser) for its
own flags and run(args) -> the output directory."""
from data_prep.recipes import custom, iwslt14, iwslt17, wmt14

RECIPES = (custom, iwslt14, iwslt17, wmt14)
