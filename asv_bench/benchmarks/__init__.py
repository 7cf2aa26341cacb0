"""asv benchmarks for mmarray: mapping against buffered I/O, and the costs of
growth, access and sharing.  See ``docs/benchmarks.md``; helpers are in
``common.py``."""
