"""Enrollment benchmark of the EST appliance against this machine's own limits.

`python -m bench` (see docs/PERFORMANCE.md): starts appliances on 127.0.0.1, drives them with a
multi-process load generator and prints every result beside, and as a ratio to, what the same
machine does with the same keys and libraries and no appliance in between.
"""
