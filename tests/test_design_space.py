"""The design space: the real file loads; bad files exit 2 naming the field; validity,
repair, neighbours and covering designs respect the constraints; `candidate new`
writes any valid point as a self-contained candidate and refuses the rest."""

from __future__ import annotations

import itertools
import re
import tomllib
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import pytest
from conftest import edit, run_cli

from vibeserve_ray.design_space import covering_designs, default_space_path, load_space, materialise, parse_assignments
from vibeserve_ray.engine.config import EngineConfig
from vibeserve_ray.engine.space import families, read_space, space_path
from vibeserve_ray.errors import BadInput

ROOT = Path(__file__).resolve().parent.parent
GOOD = default_space_path().read_text()
SPACE = load_space(default_space_path())
DEFAULT_DESIGN, DEFAULT_KNOBS = SPACE.defaults()


def whole(text: str):
    return lambda _: text


MINIMAL = 'family = "llama"\nengine = "vibeserve_ray.engine"\n'

BAD_SPACES = [
    ("missing family", edit('family = "llama"\n', ""), "family"),
    ("engine not a string", edit('engine = "vibeserve_ray.engine"', "engine = 3"), "engine"),
    ("unknown top-level key", lambda s: "version = 2\n" + s, "version"),
    ("no choices", whole(MINIMAL), "choices"),
    ("choice not a table", whole(MINIMAL + "choices.scheduler = 3\n"), "choices.scheduler"),
    ("unknown key in a choice", edit("[choices.compile]\n", '[choices.compile]\ndefault = "off"\n'), "choices.compile.default"),
    ("options not a list", edit('options = ["off", "on", "graph"]\ndoc = "torch.compile', 'options = "on"\ndoc = "torch.compile'),
     "choices.compile.options"),
    ("duplicate options", edit('options = ["float32", "bfloat16"]', 'options = ["float32", "float32"]'), "choices.dtype.options"),
    ("requires an option that does not exist", edit('requires.static = { kv_cache = ["slab", "paged"] }',
                                                    'requires.static = { kv_cache = ["slab", "ring"] }'),
     "choices.scheduler.requires.static.kv_cache"),
    ("requires an unknown choice", edit('requires.on = { kv_cache = ["paged"] }', 'requires.on = { kv_store = ["paged"] }'),
     "choices.prefix_cache.requires.on.kv_store"),
    ("requirement of an option the choice lacks", edit('requires.on = { kv_cache = ["paged"] }', 'requires.yes = { kv_cache = ["paged"] }'),
     "choices.prefix_cache.requires.yes"),
    ("requirement not a list", edit('requires.on = { kv_cache = ["paged"] }', 'requires.on = { kv_cache = "paged" }'),
     "choices.prefix_cache.requires.on.kv_cache"),
    ("devices of an option the choice lacks", edit('devices.flashinfer = ["cuda"]', 'devices.flashattn = ["cuda"]'),
     "choices.attention.devices.flashattn"),
    ("devices not a list", edit('devices.flashinfer = ["cuda"]', 'devices.flashinfer = "cuda"'), "choices.attention.devices.flashinfer"),
    ("knobs not a table", whole(MINIMAL + 'knobs = 3\n[choices.compile]\noptions = ["off", "on"]\n'), "knobs"),
    ("unknown knob type", edit('[knobs.spec_k]\ntype = "int"', '[knobs.spec_k]\ntype = "integer"'), "knobs.spec_k.type"),
    ("unknown key in a knob", edit("[knobs.spec_k]\n", "[knobs.spec_k]\nstep = 2\n"), "knobs.spec_k.step"),
    ("range low > high", edit("low = 1\nhigh = 64", "low = 100\nhigh = 64"), "knobs.max_num_seqs.low"),
    ("low not a number", edit("low = 1\nhigh = 64", 'low = "1"\nhigh = 64'), "knobs.max_num_seqs.low"),
    ("float bound on an int knob", edit("low = 1\nhigh = 8\ndefault = 4", "low = 1\nhigh = 8.5\ndefault = 4"), "knobs.spec_k.high"),
    ("missing default", edit("default = 4\n", ""), "knobs.spec_k.default"),
    ("default out of range", edit("default = 16\nlog = true", "default = 999\nlog = true"), "knobs.max_num_seqs.default"),
    ("default of the wrong type", edit("default = 0\n", 'default = "auto"\n'), "knobs.num_threads.default"),
    ("categorical default not a choice", edit("default = 16\ndoc = \"tokens per KV block", "default = 12\ndoc = \"tokens per KV block"),
     "knobs.block_size.default"),
    ("categorical without choices", edit("choices = [8, 16, 32]", "choices = []"), "knobs.block_size.choices"),
    ("log scale from zero", edit('[knobs.num_threads]\ntype = "int"', '[knobs.num_threads]\nlog = true\ntype = "int"'),
     "knobs.num_threads.log"),
    ("tune not a boolean", edit("tune = false\ndoc = \"tokens per slab", "tune = \"false\"\ndoc = \"tokens per slab"),
     "knobs.max_model_len.tune"),
    ("per_core not a boolean", edit("per_core = true ", "per_core = 1 "), "knobs.num_threads.per_core"),
    ("per_core on a float knob", edit("default = 5.0\n", "default = 5.0\nper_core = true\n"), "knobs.batch_wait_ms.per_core"),
    ("applies_when an unknown choice", edit('applies_when = { speculation = ["prompt_lookup", "jump_forward"] }\n\n[knobs.spec_ngram]',
                                            'applies_when = { speculate = ["prompt_lookup"] }\n\n[knobs.spec_ngram]'),
     "knobs.spec_k.applies_when.speculate"),
    ("applies_when an unknown option", edit('applies_when = { scheduler = ["static"] }', 'applies_when = { scheduler = ["batch"] }'),
     "knobs.batch_wait_ms.applies_when.scheduler"),
    ("precision of an option the choice lacks", edit('precision.bfloat16 = "bfloat16"', 'precision.float8 = "bfloat16"'),
     "choices.dtype.precision.float8"),
    ("precision off the ladder", edit('precision.bfloat16 = "bfloat16"', 'precision.bfloat16 = "bf16"'), "choices.dtype.precision.bfloat16"),
    ("not toml", lambda s: s + "\n[[[", "search space"),
]


def bad_space(tmp_path, edit_text) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(edit_text(GOOD))
    return str(path)


# --- loading -----------------------------------------------------------------------


def test_real_space_loads_typed():
    assert SPACE.family == "llama" and SPACE.engine == "vibeserve_ray.engine"
    assert set(SPACE.choices) == {"scheduler", "kv_cache", "prefix_cache", "attention", "compile", "dtype", "speculation", "step_loop", "linear"}
    assert SPACE.choices["attention"].devices == {"flashinfer": ("cuda",), "decode_kernel": ("cpu",)}
    assert SPACE.choices["prefix_cache"].requires == {"on": {"kv_cache": ("paged",)}}
    k = SPACE.knobs["max_num_seqs"]
    assert (k.kind, k.low, k.high, k.log, k.tune) == ("int", 1, 64, True, True)
    assert SPACE.knobs["block_size"].choices == (8, 16, 32) and SPACE.knobs["max_model_len"].tune is False


@pytest.mark.parametrize("family", families())
def test_the_search_and_the_engine_read_one_space_file(family):
    space = load_space(space_path(family))
    assert (ROOT / "search_spaces" / f"{family}.toml").resolve() == space_path(family) == space.path and space.family == family
    assert space.path.is_relative_to(ROOT / "vibeserve_ray" / "engine"), "the file travels inside every candidate's engine"
    engine = read_space(family)
    assert engine.choices == space.choices and (engine.default_design(), engine.knob_defaults) == space.defaults()
    seed = asdict(EngineConfig.resolve({}, engine, "cpu"))
    design, knobs = space.defaults()
    assert {k: v for k, v in seed.items() if k in design or k in knobs} == {
        **{k: v == "on" if space.choices[k].options == ("off", "on") else v for k, v in design.items()}, **knobs}
    # what the space leaves out runs as the plain option (no speculation for a hybrid: its state cannot roll back)
    plain = {f.name: f.default for f in fields(EngineConfig) if f.name not in design and f.name not in knobs}
    assert {k: seed[k] for k in plain} == plain and all(v is not MISSING for v in plain.values())
    assert space.validate(*space.defaults(), device="cpu") == []


@pytest.mark.parametrize("case,edit_text,field", BAD_SPACES, ids=[c[0] for c in BAD_SPACES])
def test_bad_space_raises_naming_the_field(tmp_path, case, edit_text, field):
    path = bad_space(tmp_path, edit_text)
    with pytest.raises(BadInput) as info:
        load_space(path)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(path), str(info.value)


@pytest.mark.parametrize("case,edit_text,field", BAD_SPACES, ids=[c[0] for c in BAD_SPACES])
def test_bad_space_exits_2_with_one_line(tmp_path, case, edit_text, field):
    path = bad_space(tmp_path, edit_text)
    result = run_cli("candidate", "new", str(tmp_path / "cand"), "--space", path, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert path in lines[0] and re.search(re.escape(field), lines[0]), lines[0]
    assert not (tmp_path / "cand").exists()


def test_missing_space_file_exits_2(tmp_path):
    result = run_cli("candidate", "new", str(tmp_path / "cand"), "--space", str(tmp_path / "nowhere.toml"), timeout=60)
    assert result.returncode == 2 and "nowhere.toml" in result.stderr and "Traceback" not in result.stderr


# --- validity ----------------------------------------------------------------------


def test_default_design_is_valid_on_cpu_and_cuda():
    assert SPACE.is_valid(DEFAULT_DESIGN, "cpu") and SPACE.is_valid(DEFAULT_DESIGN, "cuda:0")


def test_prefix_cache_needs_the_paged_kv_cache():
    assert not SPACE.is_valid({"prefix_cache": "on", "kv_cache": "dynamic"}, "cpu")
    assert not SPACE.is_valid({"prefix_cache": "on"}, "cpu")  # the default kv_cache is dynamic
    assert SPACE.is_valid({"prefix_cache": "on", "kv_cache": "paged"}, "cpu")
    [problem] = SPACE.validate({"prefix_cache": "on", "kv_cache": "slab"}, {}, "cpu")
    assert problem.startswith("design.prefix_cache") and "kv_cache" in problem and "paged" in problem


def test_batching_schedulers_need_a_preallocated_kv_cache():
    for scheduler in ("static", "continuous"):
        assert not SPACE.is_valid({"scheduler": scheduler, "kv_cache": "dynamic"}, "cpu")
        assert SPACE.is_valid({"scheduler": scheduler, "kv_cache": "slab"}, "cpu")


def test_flashinfer_only_on_cuda():
    assert not SPACE.is_valid({"attention": "flashinfer"}, "cpu")
    assert SPACE.is_valid({"attention": "flashinfer"}, "cuda") and SPACE.is_valid({"attention": "flashinfer"}, "cuda:1")
    [problem] = SPACE.validate({"attention": "flashinfer"}, {}, "cpu")
    assert problem.startswith("design.attention") and "cuda" in problem


def test_reduced_precision_only_where_the_accuracy_contract_admits_it():
    bf16, int8 = {"dtype": "bfloat16"}, {"dtype": "bfloat16", "linear": "int8"}
    assert SPACE.is_valid(bf16, "cpu") and SPACE.is_valid(int8, "cpu")  # the engine serves both; the target's contract decides
    exact, bf16_tier, int8_tier = SPACE.under("float32"), SPACE.under("bfloat16"), SPACE.under("int8")
    assert not exact.is_valid(bf16, "cpu") and bf16_tier.is_valid(bf16, "cpu") and int8_tier.is_valid(bf16, "cpu")
    assert not bf16_tier.is_valid(int8, "cpu") and int8_tier.is_valid(int8, "cpu")
    [problem] = exact.validate(bf16, {}, "cpu")
    assert problem.startswith("design.dtype") and "computes in bfloat16" in problem and "accuracy contract" in problem
    [problem] = SPACE.validate({"linear": "int8"}, {}, "cpu")  # int8 weights multiply bfloat16 activations
    assert problem.startswith("design.linear") and "dtype" in problem
    assert not SPACE.is_valid(int8, "cuda")  # measured on a CPU kernel only


def test_unknown_choices_options_and_knobs_are_named():
    problems = SPACE.validate({"scheduler": "magic", "foo": "bar"}, {}, "cpu")
    assert any(p.startswith("design.scheduler") and "magic" in p for p in problems)
    assert any(p.startswith("design.foo") for p in problems)
    problems = SPACE.validate({}, {"max_num_seqs": 0, "block_size": 12, "spec_k": 2.5, "nope": 1}, "cpu")
    assert sorted(p.split(" ")[0].rstrip(":") for p in problems) == ["knobs.block_size", "knobs.max_num_seqs", "knobs.nope", "knobs.spec_k"]


def test_all_designs_are_exactly_the_valid_products():
    names = list(SPACE.choices)
    every = [dict(zip(names, opts)) for opts in itertools.product(*(SPACE.choices[n].options for n in names))]
    for device in ("cpu", "cuda"):
        assert SPACE.all_designs(device) == [d for d in every if SPACE.is_valid(d, device)]
    cpu = SPACE.all_designs("cpu")
    assert DEFAULT_DESIGN in cpu and not any(d["attention"] == "flashinfer" for d in cpu) and any(d["dtype"] == "bfloat16" for d in cpu)
    exact = SPACE.under("float32").all_designs("cpu")
    assert exact == [d for d in cpu if d["dtype"] == "float32" and d["linear"] != "int8"]


# --- moving through the space ------------------------------------------------------


def test_repair_makes_an_invalid_design_valid_and_keeps_the_rest():
    broken = {"prefix_cache": "on", "kv_cache": "dynamic", "attention": "eager", "compile": "on"}
    fixed = SPACE.repair(broken, "cpu")
    assert SPACE.is_valid(fixed, "cpu")
    assert fixed == {**DEFAULT_DESIGN, "prefix_cache": "on", "kv_cache": "paged", "attention": "eager", "compile": "on"}


def test_repair_falls_back_from_cuda_only_options_on_cpu_and_from_precision_the_contract_refuses():
    fixed = SPACE.repair({"attention": "flashinfer", "dtype": "bfloat16", "speculation": "prompt_lookup"}, "cpu")
    assert fixed == {**DEFAULT_DESIGN, "dtype": "bfloat16", "speculation": "prompt_lookup"}
    fixed = SPACE.under("float32").repair({"attention": "flashinfer", "dtype": "bfloat16", "speculation": "prompt_lookup"}, "cpu")
    assert fixed == {**DEFAULT_DESIGN, "speculation": "prompt_lookup"}
    assert SPACE.under("bfloat16").repair({"dtype": "bfloat16", "linear": "int8"}, "cpu") == {**DEFAULT_DESIGN, "dtype": "bfloat16"}
    assert SPACE.repair({"attention": "flashinfer"}, "cuda") == {**DEFAULT_DESIGN, "attention": "flashinfer"}


def test_repair_chains_requirements_and_leaves_valid_designs_alone():
    fixed = SPACE.repair({"scheduler": "continuous", "prefix_cache": "on", "kv_cache": "dynamic"}, "cpu")
    assert fixed == {**DEFAULT_DESIGN, "scheduler": "continuous", "prefix_cache": "on", "kv_cache": "paged"}
    for d in SPACE.all_designs("cpu"):
        assert SPACE.repair(d, "cpu") == d


def test_repair_gives_none_for_unknown_options():
    assert SPACE.repair({"scheduler": "magic"}, "cpu") is None


def moved_choice(base: dict, neighbour: dict) -> str | None:
    """The one choice whose move explains `neighbour`: the others that changed are
    exactly requirements of its new option."""
    changed = {n for n in base if base[n] != neighbour[n]}
    for name in changed:
        required = set(SPACE.choices[name].requires.get(neighbour[name], {}))
        if changed - {name} <= required:
            return name
    return None


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_neighbours_are_valid_and_one_choice_away(device):
    for base in [DEFAULT_DESIGN, *covering_designs(SPACE, device)]:
        neighbours = SPACE.neighbours(base, device)
        assert neighbours and len({tuple(sorted(n.items())) for n in neighbours}) == len(neighbours)
        for n in neighbours:
            assert SPACE.is_valid(n, device), n
            assert n != base and moved_choice(base, n) is not None, (base, n)


def test_neighbours_of_the_seed():
    moves = {tuple(sorted((k, v) for k, v in n.items() if DEFAULT_DESIGN[k] != v)) for n in SPACE.neighbours(DEFAULT_DESIGN, "cpu")}
    assert moves == {
        (("kv_cache", "slab"),), (("kv_cache", "paged"),), (("attention", "eager"),), (("attention", "decode_kernel"),),
        (("compile", "on"),), (("compile", "graph"),), (("speculation", "prompt_lookup"),), (("speculation", "jump_forward"),), (("step_loop", "process"),), (("linear", "onednn"),),
        (("kv_cache", "paged"), ("prefix_cache", "on")),
        (("kv_cache", "slab"), ("scheduler", "static")), (("kv_cache", "paged"), ("scheduler", "static")),
        (("kv_cache", "slab"), ("scheduler", "continuous")), (("kv_cache", "paged"), ("scheduler", "continuous")),
        (("dtype", "bfloat16"),), (("dtype", "bfloat16"), ("linear", "int8")),
    }
    exact = {tuple(sorted((k, v) for k, v in n.items() if DEFAULT_DESIGN[k] != v)) for n in SPACE.under("float32").neighbours(DEFAULT_DESIGN, "cpu")}
    assert exact == {m for m in moves if ("dtype", "bfloat16") not in m}  # an exact contract never proposes reduced precision
    on_cuda = SPACE.neighbours(DEFAULT_DESIGN, "cuda")
    assert {**DEFAULT_DESIGN, "attention": "flashinfer"} in on_cuda and {**DEFAULT_DESIGN, "dtype": "bfloat16"} in on_cuda


def test_active_knobs_drop_those_that_do_not_apply():
    active = lambda design: {k.name for k in SPACE.active_knobs({**DEFAULT_DESIGN, **design})}  # noqa: E731
    assert active({}) == {"num_threads"}
    assert active({"scheduler": "static", "kv_cache": "slab"}) == {"num_threads", "max_num_seqs", "batch_wait_ms"}
    assert active({"scheduler": "continuous", "kv_cache": "paged", "speculation": "prompt_lookup"}) == {
        "num_threads", "max_num_seqs", "max_num_batched_tokens", "block_size", "spec_k", "spec_ngram"}
    # max_model_len and num_kv_blocks apply, but are not tuned (tune = false)
    assert "max_model_len" not in active({"kv_cache": "slab"}) and "num_kv_blocks" not in active({"kv_cache": "paged"})


def test_interacting_choices_come_from_requirements_and_knob_conditions(tmp_path):
    assert SPACE.interacting() == [("compile", "linear"), ("dtype", "linear"), ("kv_cache", "prefix_cache"), ("kv_cache", "scheduler")]
    path = tmp_path / "space.toml"
    path.write_text(GOOD + '\n[knobs.overlap]\ntype = "int"\nlow = 0\nhigh = 1\ndefault = 0\n'
                    'applies_when = { compile = ["on"], speculation = ["prompt_lookup"] }\n')
    assert ("compile", "speculation") in load_space(path).interacting()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_covering_designs_cover_every_option_and_interacting_pair(device):
    cover = covering_designs(SPACE, device)
    valid = SPACE.all_designs(device)
    assert all(SPACE.is_valid(d, device) for d in cover) and len(cover) < len(valid)
    for name, choice in SPACE.choices.items():
        possible = {d[name] for d in valid}
        assert {d[name] for d in cover} == possible
        assert possible == set(choice.options) - ({"flashinfer"} if device == "cpu" else {"onednn", "int8", "decode_kernel"})
    for a, b in SPACE.interacting():
        assert {(d[a], d[b]) for d in cover} == {(d[a], d[b]) for d in valid}, (a, b)


# --- the command line ----------------------------------------------------------------


def test_parse_assignments():
    assert parse_assignments(["a=1", " b = x=y "], "command line", "knobs") == {"a": "1", "b": "x=y"}
    with pytest.raises(BadInput) as info:
        parse_assignments(["scheduler"], "command line", "design")
    assert info.value.field == "--design scheduler"


def test_materialise_refuses_an_invalid_point_naming_the_field(tmp_path):
    with pytest.raises(BadInput) as info:
        materialise(SPACE, tmp_path / "c", {"prefix_cache": "on"}, {}, source="search")
    assert info.value.file == "search" and info.value.field == "design.prefix_cache"
    with pytest.raises(BadInput) as info:
        materialise(SPACE, tmp_path / "c", {}, {"spec_k": 99})
    assert info.value.field == "knobs.spec_k" and "[1, 8]" in info.value.message
    assert not (tmp_path / "c").exists()


def test_candidate_new_writes_a_self_contained_candidate(tmp_path):
    dest = tmp_path / "cand"
    result = run_cli("candidate", "new", str(dest), "--design", "scheduler=continuous", "kv_cache=paged", "prefix_cache=on",
                     "--knobs", "max_num_seqs=8", "block_size=32", "--knobs", "batch_wait_ms=2.5", timeout=60)
    assert result.returncode == 0, result.stderr
    data = tomllib.loads((dest / "candidate.toml").read_text())
    assert data["engine"]["entrypoint"] == "engine:create_engine"
    assert data["design"] == {**DEFAULT_DESIGN, "scheduler": "continuous", "kv_cache": "paged", "prefix_cache": "on"}
    assert data["knobs"] == {**DEFAULT_KNOBS, "max_num_seqs": 8, "block_size": 32, "batch_wait_ms": 2.5}
    # its own copy of every engine module and of its space, importing nothing of ours but the candidate contract
    sources = {p.relative_to(dest / "engine").as_posix(): p.read_text() for p in (dest / "engine").rglob("*.py")}
    assert {"__init__.py", "core/scheduler.py", "core/kv_cache.py", "core/block_pool.py", "core/speculation.py", "models/llama.py"} <= set(sources)
    assert (dest / "engine" / "models" / "llama.toml").read_text() == GOOD
    for name, text in sources.items():
        ours = set(re.findall(r"^\s*(?:from|import) (vibeserve_ray[\w.]*)", text, re.M))
        assert ours <= {"vibeserve_ray.candidate"}, (name, ours)
    assert not list(dest.rglob("__pycache__"))


def test_candidate_new_refuses_a_non_empty_dir_unless_forced(tmp_path):
    dest = tmp_path / "cand"
    assert run_cli("candidate", "new", str(dest), timeout=60).returncode == 0
    result = run_cli("candidate", "new", str(dest), "--design", "compile=on", timeout=60)
    assert result.returncode == 2 and "--force" in result.stderr
    assert run_cli("candidate", "new", str(dest), "--design", "compile=on", "--force", timeout=60).returncode == 0
    assert tomllib.loads((dest / "candidate.toml").read_text())["design"]["compile"] == "on"


def test_candidate_new_checks_options_against_the_device(tmp_path):
    result = run_cli("candidate", "new", str(tmp_path / "cpu"), "--design", "attention=flashinfer", timeout=60)
    assert result.returncode == 2 and "design.attention" in result.stderr and "cuda" in result.stderr
    result = run_cli("candidate", "new", str(tmp_path / "gpu"), "--design", "attention=flashinfer", "--device", "cuda", timeout=60)
    assert result.returncode == 0, result.stderr


BAD_POINTS = [
    ("unknown choice", ["--design", "foo=bar"], "design.foo"),
    ("unknown option", ["--design", "scheduler=magic"], "design.scheduler"),
    ("unmet requirement", ["--design", "prefix_cache=on", "kv_cache=dynamic"], "design.prefix_cache"),
    ("not name=value", ["--design", "scheduler"], "--design scheduler"),
    ("knob not an int", ["--knobs", "max_num_seqs=abc"], "knobs.max_num_seqs"),
    ("int knob given a float", ["--knobs", "spec_k=2.5"], "knobs.spec_k"),
    ("knob out of range", ["--knobs", "max_num_seqs=1000"], "knobs.max_num_seqs"),
    ("categorical knob not a choice", ["--knobs", "block_size=12"], "knobs.block_size"),
    ("unknown knob", ["--knobs", "warp_speed=9"], "knobs.warp_speed"),
]


@pytest.mark.parametrize("case,args,field", BAD_POINTS, ids=[c[0] for c in BAD_POINTS])
def test_candidate_new_bad_point_exits_2_with_one_line(tmp_path, case, args, field):
    dest = tmp_path / "cand"
    result = run_cli("candidate", "new", str(dest), *args, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: command line: ") and "Traceback" not in result.stderr, result.stderr
    assert field in lines[0], lines[0]
    assert not dest.exists()


def test_a_per_core_knob_is_tuned_within_the_targets_cores_and_each_candidate_samples_its_own():
    import optuna

    from vibeserve_ray.inner.evaluate import _suggest, sampler_seed

    threads = next(k for k in SPACE.knobs.values() if k.name == "num_threads")
    assert threads.per_core and threads.high > 2
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    drawn = [_suggest(study.ask(), threads, 2) for _ in range(40)]
    assert max(drawn) == 2 and min(drawn) == 0, drawn
    unbounded = [_suggest(study.ask(), threads, 0) for _ in range(40)]  # no whole core held (a GPU target's 0.5): the range as written
    assert max(unbounded) > 2
    seeds = {sampler_seed({"scheduler": s}, {"num_threads": 1}) for s in ("serial", "static", "continuous")}
    assert len(seeds) == 3 and sampler_seed({"scheduler": "static"}, {"num_threads": 1}) in seeds
