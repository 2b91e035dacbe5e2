"""WSGI entry point for gunicorn: ``gunicorn -c gunicorn.conf.py wsgi:app``."""

import gc

from qcimage import create_app

app = create_app()
# Everything built so far lives as long as the worker: leave it out of the collector's
# full passes. Without this, a full collection walked it every few thousand requests
# and stopped every thread of the worker for ~57 ms (measured in-process on look-ups),
# straight into the p99.
gc.freeze()
