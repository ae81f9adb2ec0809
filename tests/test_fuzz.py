"""Property-based fuzzing of the scenario loader and of the analytic predictor (hypothesis).

Documents are generated from the shipped scenarios by mutating them: a value
replaced by one of another type, NaN, infinity, a huge, tiny or negative
number, a number scaled, a key deleted, an unknown key added. The loader must
return a Scenario or raise ScenarioError (lines that each name the file),
never anything else; `predict` on an accepted scenario must give finite,
non-negative figures. Raw text and bytes are fuzzed too. Each example has a
deadline, so a hang fails instead of stalling the suite.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import tomllib
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cluster.predict import predict
from cluster.scenario import NAME, Scenario, ScenarioError, parse_scenario, shipped_scenarios

ROOT = Path(__file__).resolve().parent.parent
BASES = [tomllib.loads(p.read_text()) for p in shipped_scenarios(ROOT / "scenarios")]
PATH = "fuzz.toml"
# LIVEMIG_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the file to a few seconds.
EXAMPLES = int(os.environ.get("LIVEMIG_FUZZ_EXAMPLES", "150"))
# A deadline catches a hang; an example takes 0.2-0.9 s but 5 s on a machine loaded to 20.
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=10), database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- a TOML writer (inline tables only, so any nesting is one line per top-level key) ---

def _toml_str(s: str) -> str:
    """A TOML basic string: JSON's escapes, but every control character and DEL as \\uXXXX."""
    body = "".join(c if c >= " " and c not in '"\\\x7f' else
                   ("\\" + c if c in '"\\' else f"\\u{ord(c):04x}") for c in s)
    return f'"{body}"'


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_str(k)


def to_toml(value, top: bool = False) -> str:
    if isinstance(value, dict):
        items = [f"{_key(k)} = {to_toml(v)}" for k, v in value.items()]
        return "\n".join(items) + "\n" if top else "{ " + ", ".join(items) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    return _toml_str(value)


# --- mutations of a document ---------------------------------------------------------------

def places(doc, at=()) -> list[tuple]:
    """Paths to every value in the document (keys and list indices), the document itself first."""
    out = [at]
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out += places(v, at + (k,))
    return out


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


ODD_NUMBERS = [0, -1, 1e308, -1e308, 1e-300, math.nan, math.inf, -math.inf, 2**63 - 1, -(2**63), 0.5, 4097]
VALUES = st.one_of(
    st.sampled_from(ODD_NUMBERS), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(), st.text(max_size=12), st.sampled_from(["", "src", "dst", "..", "a/b", "uniform", "source"]),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(-3, 3), max_size=2),
)


ALL_KINDS = ("replace", "scale", "delete", "unknown")


WILD = (0, 0.001, 0.5, 2, 10, 1000, -1)  # factors that often leave a field's bounds
MILD = (0.5, 0.9, 1.1, 2, 4)  # factors that mostly stay inside them


@st.composite
def mutated(draw, kinds=ALL_KINDS, factors=WILD) -> dict:
    """A shipped scenario with 1 to 3 mutations of the given kinds (numbers scaled by `factors`)."""
    doc = json.loads(json.dumps(draw(st.sampled_from(BASES))))  # a deep copy
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(places(doc)))
        target, kind = _get(doc, path), draw(st.sampled_from(kinds))
        if kind == "unknown" and isinstance(target, dict):
            target[draw(st.sampled_from(["extra", "memory_gib", "x y", "colour"]))] = draw(VALUES)
        elif not path:
            continue  # the document itself is neither replaced nor deleted
        elif kind == "delete":
            del _get(doc, path[:-1])[path[-1]]
        elif kind == "scale" and isinstance(target, (int, float)) and not isinstance(target, bool):
            factor = draw(st.sampled_from(factors))
            _get(doc, path[:-1])[path[-1]] = type(target)(target * factor)
        else:
            _get(doc, path[:-1])[path[-1]] = draw(VALUES)
    return doc


def load_or_refuse(text: str) -> Scenario | None:
    """The scenario, or None after checking the refusal is well-formed lines naming the file."""
    try:
        return parse_scenario(text, PATH)
    except ScenarioError as exc:
        assert exc.lines and all(line.startswith(f"{PATH}: ") and "\n" not in line for line in exc.lines), exc.lines
        assert all(len(line) < 2000 for line in exc.lines)
        return None


def figures(value, at="result"):
    """(path, number) for every number in predict's result (booleans and None are not figures)."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from figures(v, f"{at}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from figures(v, f"{at}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield at, value


def check_predict(sc: Scenario) -> None:
    try:
        result = predict(sc, PATH)
    except ScenarioError as exc:  # a refusal is allowed, in one line
        assert len(exc.lines) == 1, exc.lines
        return
    bad = [(at, v) for at, v in figures(result) if not math.isfinite(v) or v < 0]
    assert not bad, bad[:5]


# --- the properties -----------------------------------------------------------------------

def test_every_base_is_valid():
    for doc in BASES:
        assert load_or_refuse(to_toml(doc, top=True)) is not None, doc.get("name")


@FUZZ
@given(mutated())
def test_mutated_scenarios_load_or_are_refused_and_predict_is_sane(doc):
    text = to_toml(doc, top=True)
    sc = load_or_refuse(text)
    event("accepted" if sc is not None else "refused")  # --hypothesis-show-statistics: how often predict ran
    if sc is not None:
        check_predict(sc)


@FUZZ
@given(mutated(kinds=("scale",), factors=MILD))
def test_scaled_numbers_give_sane_predictions(doc):
    # Only numbers scaled: most such documents are valid, so predict runs on many of them.
    sc = load_or_refuse(to_toml(doc, top=True))
    event("accepted" if sc is not None else "refused")
    if sc is not None:
        check_predict(sc)


@FUZZ
@given(st.sampled_from(BASES), st.integers(0, 10_000), st.text(max_size=8))
def test_text_cut_or_spliced_anywhere_is_refused_in_lines(doc, at, insert):
    text = to_toml(doc, top=True)
    at %= len(text) + 1
    load_or_refuse(text[:at] + insert + text[at:])


def test_a_throttled_guest_that_cannot_converge_is_predicted_at_once():
    # A downtime limit of 1e-300 ms never converges; with SDPS at its floor the dirty set shrank
    # by fractions of a page forever, and the model's log grew to 24 GB (a fuzzer finding).
    doc = tomllib.loads((ROOT / "scenarios/vmotion/soliddb-16clients-vmotion.toml").read_text())
    doc["migration"]["downtime_limit_ms"] = 1e-300
    def hung(*_):
        raise TimeoutError("predict did not finish in 20 s")
    signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        result = predict(load_or_refuse(to_toml(doc, top=True)), PATH)
    finally:
        signal.alarm(0)
    assert result["stop_reason"] == "stalled" and math.isfinite(result["total_time_s"])


@settings(max_examples=EXAMPLES, deadline=timedelta(seconds=10), database=None)
@given(st.text(max_size=200))
def test_any_text_is_refused_in_lines(text):
    assert load_or_refuse(text) is None


@settings(max_examples=200, deadline=None, database=None)
@given(st.from_regex(NAME, fullmatch=True))
def test_an_accepted_name_stays_inside_the_runs_directory(name):
    # The default output directory is runs/<scenario name>: no accepted name may lead elsewhere.
    out = os.path.normpath(os.path.join("runs", name))
    assert os.path.dirname(out) == "runs" and out != "runs"
