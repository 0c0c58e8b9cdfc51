"""Reinforcement learning for pruning decisions (ALGORITHMS.md sections 10 and 11).

Import-light on purpose: ``alma_bench.rl.qlearn`` needs only numpy, and the gymnasium / sb3
parts (learned schedules) live in their own modules, so importing this package never pulls
those optional dependencies in.
"""
