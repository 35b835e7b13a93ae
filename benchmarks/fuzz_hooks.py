"""Schemathesis hook for `fuzz.py`: caps every request's token budget at
$VIBESERVE_FUZZ_MAX_TOKENS, so fuzzing spends its time on the front, not on decoding.

The cap is applied to the request as sent, never to the schema: a budget above it (or
absent, which means "up to the context length") is as valid as the capped one, so a
valid request stays valid and an invalid one stays invalid, and schemathesis' verdict
on what the server accepts is not skewed.
"""

import os

import schemathesis

LIMIT = int(os.environ.get("VIBESERVE_FUZZ_MAX_TOKENS", "4"))
BUDGETS = ("max_tokens", "max_completion_tokens")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    body = case.body
    if not isinstance(body, dict) or "model" not in body:
        return
    for name in BUDGETS:
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > LIMIT:
            body[name] = LIMIT
    if all(body.get(name) is None for name in BUDGETS):
        body["max_tokens"] = LIMIT
