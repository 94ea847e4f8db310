"""`make bench`: figures measured in QEMU guests, always as ratios to a baseline measured
in the same boot, or as medians (these machines are noisy)."""
