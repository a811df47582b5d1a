"""Deciding a command: pure functions and a table-backed handler, no I/O, no faust.

`domain.py` is the one file that decides a sign-up.
"""
