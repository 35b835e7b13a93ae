"""The target's own accuracy check (`[accuracy] script`), run against a candidate's URL.

The method takes "accuracy-checking scripts" from the user: whatever our statistics do
not look at (a task metric, a format, an endpoint) the target's author can check. The
judge runs the script as `python SCRIPT URL MODEL` beside the running candidate, with
VIBESERVE_URL, VIBESERVE_MODEL, VIBESERVE_MODEL_DIR and VIBESERVE_TOKENIZER_DIR set too.
Exit 0 passes; anything else rejects the candidate with the last lines the script
printed as the reason. It is the target's code, not the candidate's, so it runs outside
the sandbox, but under a time limit that really kills it (its whole process group) and
with the candidate's allow-listed environment: no credential of this machine reaches it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from vibeserve_ray.sandbox.env import candidate_env
from vibeserve_ray.target import Target

TAIL_LINES = 3


def run_script(target: Target, base_url: str, served_name: str) -> str:
    """'' when the target's accuracy script passes the server at `base_url`, else why not."""
    a = target.accuracy
    assert a.script is not None
    env = candidate_env({"VIBESERVE_URL": base_url, "VIBESERVE_MODEL": served_name, "VIBESERVE_MODEL_DIR": str(target.model_dir()),
                         "VIBESERVE_TOKENIZER_DIR": str(target.tokenizer_dir())})
    proc = subprocess.Popen([sys.executable, str(target.path(a.script)), base_url, served_name], cwd=target.dir, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=a.script_timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"{a.script} did not finish within {a.script_timeout_s:g} s"
    finally:
        if proc.poll() is None:  # interrupted: never leave it running
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode == 0:
        return ""
    tail = " | ".join([line.strip() for line in output.splitlines() if line.strip()][-TAIL_LINES:]) or "(no output)"
    return f"{a.script} exited with code {proc.returncode}: {tail}"
