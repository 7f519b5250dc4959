"""Tasks of the user-dir; fairseq imports every module here (import_tasks)."""
