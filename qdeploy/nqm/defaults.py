"""Defaults shared by the Python API and the CLI.

Kept free of torch so that the command line can show them without paying torch's import.
"""

DIGIT_CLASSES = (8, 9)
"""The digit pair used by default: the hardest pair for a linear classifier."""

SCAN_MULTIPLES = (1.0, 1.9, 2.5, 3.0, 3.5, 4.5, 6.0)
"""Probed learning rates in units of `1/lambda0`: two below, four inside and one beyond the
NQM's catapult window `(2, 4)`."""

SCAN_STEPS = 40
"""Enough for a catapult in a network a few thousand units wide to rise and come back."""

PROBE_WIDTH = 2048
PROBE_SAMPLES = 256
PROBE_IMAGE_SIZE = 16

CATAPULT_MULTIPLES = (0.5, 1.0, 1.25, 1.5, 1.9, 2.5)
"""Experiment learning rates in units of the critical rate `2/lambda0`."""

CATAPULT_WIDTH = 1024
CATAPULT_N_TRAIN = 128
CATAPULT_STEPS = 200
