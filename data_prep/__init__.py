"""Corpus preparation: raw parallel text or public corpus archives in, SentencePiece model, encoded text,
fairseq binaries and prepare.json out. Modules, lowest layer first:

  textfiles  reading/writing text (one line-splitting rule), file digests, DataPrepError
  processes  child processes that die with data prep (and the guard process for external tools)
  locking    one process at a time on a path: flock lock files that name their holder (host, PID)
  settings   the settings of a build; their defaults are the command line's
  text       ParallelText, text steps (Moses, lower-casing, ...) and pair filters
  tools      SentencePiece training/encoding and fairseq-preprocess
  build      the output directory: fingerprint, temporary directory, prepare.json
  archives   download, digest check and reading of corpus archives
  registry   the public corpora: URLs, members and published digests of their archives
  recipes/   one module per corpus (custom, iwslt14, iwslt17, wmt14) and what they share
  cli        the command line (python -m data_prep; the prepare_*.sh scripts call it)
"""
