"""Data that ships with packages (no download): sample photos and the built-in datasets."""

BUILTIN_DATA = "digits-shift"  # the data spec that names the built-in set (anything else: an ImageFolder path)
