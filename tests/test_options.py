"""Technique options: declared once, and the schema, the errors and `livemig techniques` follow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from agents.techniques import registry
from agents.techniques.options import COMMON, COMPRESSION, CONVERGENCE, PIPELINE, POLICY, PRECOPY, Option
from cluster.scenario import Migration, parse_scenario
from tests.conftest import ROOT
from tests.test_scenario import BASE, LINE, one_problem

PRECOPY_SPEC = registry.get("precopy")


def _bad_value(opt: Option):
    """A value just outside the declared range, and the words pydantic uses for that bound."""
    if opt.choices:
        return '"bogus"', "Input should be"
    for key, delta, words in (("gt", 0, "greater than"), ("ge", -1, "greater than or equal to"),
                              ("lt", 0, "less than"), ("le", 1, "less than or equal to")):
        bound = getattr(opt, key)
        if bound is not None:
            return repr(opt.type(bound + delta)), words
    raise AssertionError(f"{opt.name} has no bound to break")


BOUNDED = [o for o in PRECOPY_SPEC.options if o.choices or o.bounds()]


def test_precopy_declares_todays_groups():
    assert PRECOPY_SPEC.options == COMMON + PRECOPY + PIPELINE + COMPRESSION + CONVERGENCE + POLICY
    assert [o.name for o in COMMON] == ["downtime_limit_ms", "bandwidth_cap_gbps", "switchover_bandwidth",
                                        "device_state_kib", "batch_pages", "setup_ms", "resume_ms",
                                        "tcp_user_timeout_ms"]
    assert PRECOPY_SPEC.factory == "agents.techniques.precopy:PrecopyMigration"


@pytest.mark.parametrize("opt", PRECOPY_SPEC.options, ids=lambda o: o.name)
def test_default_comes_from_the_declaration(opt):
    assert getattr(Migration(), opt.name) == opt.default
    assert getattr(parse_scenario(BASE, "exp.toml").migration, opt.name) == opt.default


def test_every_option_has_help_and_a_qemu_name_where_qemu_has_one():
    for opt in PRECOPY_SPEC.options:
        assert opt.help and "\n" not in opt.help, opt.name
    qemu = {o.name: o.qemu_name for o in PRECOPY_SPEC.options if o.qemu_name}
    assert qemu["downtime_limit_ms"] == "downtime-limit"
    assert qemu["bandwidth_cap_gbps"] == "max-bandwidth"
    assert qemu["xbzrle_cache_mib"] == "xbzrle-cache-size"
    assert qemu["consumers"] == "multifd-channels"


@pytest.mark.parametrize("opt", BOUNDED, ids=lambda o: o.name)
def test_a_declared_bound_gives_one_line_in_migration(opt):
    value, words = _bad_value(opt)
    field, msg = one_problem(BASE.replace("downtime_limit_ms = 300", f"{opt.name} = {value}")
                             if opt.name == "downtime_limit_ms" else BASE + f"{opt.name} = {value}\n")
    assert field == f"migration.{opt.name}"
    assert words in msg


@pytest.mark.parametrize("opt", BOUNDED, ids=lambda o: o.name)
def test_a_declared_bound_gives_one_line_in_a_migrations_entry(opt):
    value, words = _bad_value(opt)
    text = BASE.replace("[migration]", f'[[migrations]]\nvm = "web"\nto = "dst"\n{opt.name} = {value}\n\n[migration]')
    field, msg = one_problem(text)
    assert field == f"migrations[0].{opt.name}"
    assert words in msg


def test_allowed_in_words():
    consumers = PRECOPY_SPEC.option("consumers")
    assert consumers.allowed() == "1 to 64"
    assert PRECOPY_SPEC.option("downtime_limit_ms").allowed() == "> 0, <= 3,600,000"
    assert PRECOPY_SPEC.option("batch_pages").allowed() == "1 to 4,096 (or unset)"
    assert PRECOPY_SPEC.option("strategy").allowed() == "image | time-sliced"


def test_registry_names_and_unknown_technique():
    assert "precopy" in registry.names()
    assert registry.get("precopy") in registry.all_specs()
    with pytest.raises(KeyError, match="known: precopy, postcopy"):
        registry.get("teleport")


def test_a_name_registers_once():
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.TechniqueSpec("precopy", "other", COMMON, "x:Y"))
    registry.register(PRECOPY_SPEC)  # the same spec again is harmless


def test_load_imports_the_technique_lazily():
    from agents.techniques.precopy import PrecopyMigration
    assert PRECOPY_SPEC.load() is PrecopyMigration


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_importing_the_registry_and_the_schema_imports_neither_ray_nor_numpy():
    r = _python("""
        import sys
        import agents.techniques.registry, cluster.scenario
        print(sorted(m for m in ("ray", "numpy") if m in sys.modules))
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_an_option_the_technique_does_not_declare_is_refused():
    # A second technique with only the common options: registered before the
    # schema is built, as a technique module would be.
    r = _python("""
        from agents.techniques import registry
        from agents.techniques.options import COMMON
        registry.register(registry.TechniqueSpec("plain", "test", COMMON, "x:Y"))
        from cluster.scenario import ScenarioError, parse_scenario
        from tests.test_scenario import BASE
        for text in (BASE + 'technique = "plain"\\nconsumers = 4\\n',
                     BASE.replace("[migration]", '[[migrations]]\\nvm = "web"\\nto = "dst"\\n'
                                                 'technique = "plain"\\nzstd_level = 3\\n\\n[migration]'),
                     BASE + 'technique = "plain"\\nsetup_ms = 10\\n'):
            try:
                sc = parse_scenario(text, "exp.toml")
                print("ok", sc.migration_plans()[0].technique)
            except ScenarioError as exc:
                print(exc)
    """)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, lines
    assert LINE.match(lines[0])["field"] == "migration.consumers"
    assert 'not an option of technique "plain"' in lines[0] and "downtime_limit_ms" in lines[0]
    assert LINE.match(lines[1])["field"] == "migrations[0].zstd_level"
    assert lines[2] == "ok plain"


def test_livemig_techniques_json_lists_every_option():
    r = CliRunner().invoke(_cli_app(), ["techniques", "--json"])
    assert r.exit_code == 0, r.output
    listed = {t["name"]: t for t in json.loads(r.stdout)}
    assert set(listed) == set(registry.names())
    options = {o["name"]: o for o in listed["precopy"]["options"]}
    assert list(options) == [o.name for o in PRECOPY_SPEC.options]
    assert options["consumers"]["default"] == 1 and options["consumers"]["allowed"] == "1 to 64"
    assert options["xbzrle_cache_mib"]["qemu_name"] == "xbzrle-cache-size"
    assert options["strategy"]["choices"] == ["image", "time-sliced"]


def test_livemig_techniques_table_names_every_option():
    r = CliRunner().invoke(_cli_app(), ["techniques"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for opt in PRECOPY_SPEC.options:
        assert opt.name in r.stdout
    assert "downtime-limit" in r.stdout


def _cli_app():
    from cluster.cli import app
    return app
