"""A target's own accuracy check, as `[accuracy] script` names one: the judge runs it as
`python accuracy_check.py URL MODEL` against the candidate. It checks what the judge's
own gates do not look at: the prompt logprobs a completions server returns for `echo`
must be the model's (negative, one per prompt token after the first), not made up."""

import json
import sys
import urllib.request

url, model = sys.argv[1], sys.argv[2]
prompt = [101, 17, 230, 991, 42, 77, 300, 12]
body = {"model": model, "prompt": prompt, "max_tokens": 1, "echo": True, "logprobs": 0, "temperature": 0}
request = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=60) as response:
    logprobs = json.load(response)["choices"][0]["logprobs"]["token_logprobs"]
scored = [x for x in logprobs[1:len(prompt)] if x is not None]
if len(scored) < len(prompt) - 1 or max(scored) >= 0.0:
    print(f"prompt logprobs are not the model's: {scored}")
    sys.exit(1)
print(f"prompt logprobs look like the model's (mean {sum(scored) / len(scored):.2f})")
