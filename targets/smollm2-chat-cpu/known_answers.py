"""Known answers: the target's own accuracy check of a server that serves SmolLM2.

Asks each question of known_answers.jsonl through the server's /v1/chat/completions
(greedy, as a user would ask it) and counts the answers that contain an accepted answer
(whole words, any case). The reference (the target's [reference], greedy through the same
chat template, to the end-of-turn token) is asked the same questions; the server passes
when it answers right at least as many as the reference does, less one: a server may
compute in another precision, which flips a near-tie now and then, but not lose what the
model knows.

    python known_answers.py URL MODEL      # exit 0 pass, 1 fail (the last line says why), 2 bad input

Run by the judge beside a candidate (VIBESERVE_MODEL_DIR and VIBESERVE_TOKENIZER_DIR name
the checkpoint), or by hand against any OpenAI-compatible server.
"""

from __future__ import annotations

import json
import os
import re
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAX_TOKENS = 32
PARALLEL = 4  # a few questions at once: a batching server answers them together, a serial one in turn
TIMEOUT_S = 120


def right(answer: str, accepted: list[str]) -> bool:
    return any(re.search(rf"(?<!\w){re.escape(a)}(?!\w)", answer, re.IGNORECASE) for a in accepted)


def ask(base_url: str, model: str, question: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": MAX_TOKENS, "temperature": 0}
    req = urllib.request.Request(base_url.rstrip("/") + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        return json.loads(resp.read())["choices"][0]["message"]["content"] or ""


def reference_answers(questions: list[str]) -> list[str]:
    """The reference's greedy answers, through the model's chat template, cut at its end of turn."""
    # the project's reference and its cache: a checked server's answers are compared with what the target's reference says
    from transformers import AutoTokenizer

    from vibeserve_ray.reference import reference_outputs
    from vibeserve_ray.target import load_target
    from vibeserve_ray.tinymodel import cache_dir

    target = load_target(HERE)
    model_dir = Path(os.environ.get("VIBESERVE_MODEL_DIR") or target.model_dir())
    tok = AutoTokenizer.from_pretrained(os.environ.get("VIBESERVE_TOKENIZER_DIR") or str(target.tokenizer_dir()))
    config = json.loads((model_dir / "config.json").read_text())
    eos = config["eos_token_id"] if isinstance(config["eos_token_id"], list) else [config["eos_token_id"]]
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False),
                          add_special_tokens=False) for q in questions]
    r = target.spec.reference
    outs = reference_outputs(r.kind, model_dir, r.dtype, prompts, MAX_TOKENS, cache_root=cache_dir())
    answers = []
    for out in outs:
        ids = out.token_ids
        end = next((i for i, t in enumerate(ids) if t in eos), len(ids))
        answers.append(tok.decode(ids[:end], skip_special_tokens=True))
    return answers


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: known_answers.py URL MODEL", file=sys.stderr)
        return 2
    url, model = argv
    rows = [json.loads(line) for line in (HERE / "known_answers.jsonl").read_text().splitlines() if line.strip()]
    questions = [r["question"] for r in rows]
    try:
        with ThreadPoolExecutor(PARALLEL) as pool:
            served = list(pool.map(lambda q: ask(url, model, q), questions))
    except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
        print(f"known answers: the server at {url} did not answer: {type(exc).__name__}: {exc}")
        return 1
    reference = reference_answers(questions)
    served_right = [right(a, r["answers"]) for a, r in zip(served, rows)]
    ref_right = [right(a, r["answers"]) for a, r in zip(reference, rows)]
    for q, a, ok, ref_ok in zip(questions, served, served_right, ref_right):
        print(f"{'right' if ok else 'WRONG'} (reference {'right' if ref_ok else 'wrong'}): {q} -> {a.strip()[:80]!r}")
    need = sum(ref_right) - 1
    verdict = "pass" if sum(served_right) >= need else "FAIL"
    print(f"known answers: {verdict}: {sum(served_right)}/{len(rows)} right, the reference {sum(ref_right)}/{len(rows)} "
          f"(at least {need} needed)")
    return 0 if verdict == "pass" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
