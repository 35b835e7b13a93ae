"""Floods its output at start-up: the sandbox's output limit must stop it, not the host's disk."""


def create_engine(model_dir, device, knobs):
    line = "flood " * 200
    while True:
        print(line, flush=True)
