"""`make bench`: benchmarks report ratios against a peer measured in the same run (none yet)."""

import sys

print("no benchmarks yet: each one arrives with the issue that names its peer", file=sys.stderr)
