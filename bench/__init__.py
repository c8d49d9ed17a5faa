"""SparkQ benchmarks: each supervisor command against the bare operation it wraps, as ratios.

Run with `./sparkq.sh bench [--quick] [--size MB] [--pairs N] [--json FILE]` (or
`python -m bench` from the repo root inside the venv). Every measure is a pair run alternately
(A B A B ...) in the same process on the same files, so a busy or slow machine moves both sides
and the ratio stays meaningful. See docs/PERFORMANCE.md for what is measured and why.
"""
