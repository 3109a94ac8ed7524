"""Workflows: the stages a user runs (verify, bench, pipeline) as library functions.

Each takes plain arguments and returns a result object; `qdeploy/commands/` only parses
options and prints these results, so the same runs are one import away in Python.
"""
