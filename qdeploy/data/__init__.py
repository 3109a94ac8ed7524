"""Data that ships with packages (no download): sample photos and the built-in datasets."""
