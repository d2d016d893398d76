"""The run store: how every stage keeps its outputs and resumes.

One idea per module:

- ``files``: ``RunFiles``, a run directory's files by relative name, every write atomic (text,
  JSON, CSV, staged files and directories); the one place that touches the filesystem.
- ``object_store``: ``ObjectStoreFiles``, the same on a pyarrow filesystem (s3://, gs://), the
  one of ``tasks.object_store.filesystem_of``: it keeps working in the processes it is pickled
  into (Ray Train's, a Ray task's), carrying the driver's S3 endpoint and keys.
- ``location``: a run directory's path or URI (``is_uri``, ``run_path``, ``absolute``, ``parent``).
- ``guard``: the fingerprint guard, a record of what computed a directory's results and the
  one-line refusal of other settings (naming what differs).
- ``items``: ``ItemStore``, finished units (batches, chunks, tasks) one file each, for resume.
- ``run``: ``RunStore``, one run directory: the above, plus "already finished -> the stored result".

This package imports nothing (importing a submodule runs this file first: re-exports here would
tie the submodules into an import cycle, tests/test_import_cycles.py). Stages use it as::

    from pipelines.run_store.guard import Refusal
    from pipelines.run_store.run import RunStore

    store = RunStore(config.run_dir()).create()
    store.guard().check(settings, has_results=..., refusal=Refusal(...))
    if (done := store.finished("summary.json", fingerprint)) is not None:
        return done
"""
