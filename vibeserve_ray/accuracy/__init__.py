"""The accuracy contract: what a candidate's (or any server's) outputs must be to count.

A target's `[accuracy]` says which (`contract.py`): `mode = "exact"`, greedy and seeded
outputs equal to the reference's token for token (near-ties forgiven), or `mode =
"tolerance"`, statistics of the reference teacher-forced on the server's own tokens
(`score.py`) within thresholds (`stats.py`), down to a precision tier. The judge applies
them (`inner/judge/verdict.py`); `inner/judge/calibrate.py` runs controls and cheats
through the same statistics to propose the thresholds. This package reads no target: the
target contract (target.py) holds an `AccuracySpec`.
"""
