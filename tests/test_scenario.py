"""Scenario schema and validation: one line per problem, `FILE: field.path: what is wrong`.

Also the CLI's side of that contract (`livemig validate`, `livemig list`):
exit code 2, one stderr line per problem, never a traceback.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from cluster.scenario import GIB, ScenarioError, load_scenario, parse_scenario

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "scenarios" / "quickstart.toml"
LIVEMIG = ROOT / ".venv" / "bin" / "livemig"
F = "exp.toml"  # the file name problems are reported against

# A small valid scenario of our own, so these tests do not depend on the
# shipped files' exact text.
BASE = """
name = "base"
description = "two hosts, one busy VM"

[emulation]
memory_scale = 0.015625

[[hosts]]
name = "src"
role = "source"
memory_gib = 64
nics = [{ name = "eth0", speed_gbps = 10 }, { name = "eth1", speed_gbps = 25 }]

[[hosts]]
name = "dst"
role = "destination"
memory_gib = 64
nics = [{ name = "eth0", speed_gbps = 25 }]

[[network.links]]
from = "src:eth0"
to = "dst:eth0"

[[vms]]
name = "web"
memory_gib = 2
vcpus = 2
workload = { kind = "uniform", dirty_pages_per_s = 30000, working_set_gib = 0.5 }
content = { zero = 0.2, text = 0.3, structured = 0.2, random = 0.3 }

[migration]
downtime_limit_ms = 300
"""

LINE = re.compile(r"^(?P<file>[^:\n]+): (?P<field>[^:\n]+): (?P<msg>[^\n]+)$")


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, f"test bug: {old!r} not in the base scenario"
    return text.replace(old, new, 1)


def problems(text: str, path: str = F) -> list[str]:
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, path)
    lines = info.value.lines
    assert lines, "ScenarioError without lines"
    for line in lines:
        m = LINE.match(line)
        assert m, f"not `FILE: field: message`: {line!r}"
        assert m["file"] == path
        assert "Traceback" not in line
    assert str(info.value) == "\n".join(lines)
    return lines


def one_problem(text: str) -> tuple[str, str]:
    lines = problems(text)
    assert len(lines) == 1, lines
    m = LINE.match(lines[0])
    return m["field"], m["msg"]


# --- valid scenarios -----------------------------------------------------------

def test_base_scenario_is_valid():
    sc = parse_scenario(BASE, F)
    assert sc.name == "base"
    assert sc.source.name == "src" and sc.destination.name == "dst"
    assert [l.from_nic for l in sc.migration_links()] == ["src:eth0"]
    # No bandwidth given: the slower NIC of the pair sets it.
    assert sc.link_bandwidth_gbps(sc.network.links[0]) == 10
    vm = sc.vms[0]
    assert vm.workload.kind == "uniform" and vm.workload.dirty_pages_per_s == 30000
    assert vm.content.random == pytest.approx(0.3)


def test_quickstart_parses():
    sc = load_scenario(QUICKSTART)
    assert sc.name == "quickstart"
    assert len(sc.vms) >= 1
    assert sc.migration_links(), "quickstart has no source -> destination link"


@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").rglob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_scenario_is_valid(path):
    load_scenario(path)


def test_explicit_link_bandwidth_wins():
    sc = parse_scenario(edit('to = "dst:eth0"', 'to = "dst:eth0"\nbandwidth_gbps = 4'), F)
    assert sc.link_bandwidth_gbps(sc.network.links[0]) == 4


# --- one line per problem --------------------------------------------------------

def test_typo_in_optional_field_names_the_path():
    field, msg = one_problem(edit("vcpus = 2", "vcpu = 2"))
    assert field == "vms[0].vcpu"
    assert "unknown field" in msg


def test_typo_in_required_field_names_the_path():
    lines = problems(edit("memory_gib = 2", "memroy_gib = 2"))
    assert any(l.startswith(f"{F}: vms[0].memroy_gib: ") and "unknown field" in l for l in lines), lines


def test_typo_in_required_field_is_one_line_suggesting_the_right_name():
    field, msg = one_problem(edit("memory_gib = 2", "memroy_gib = 2"))
    assert field == "vms[0].memroy_gib"
    assert "memory_gib" in msg


def test_negative_memory():
    field, msg = one_problem(edit("memory_gib = 2", "memory_gib = -2"))
    assert field == "vms[0].memory_gib"
    assert "greater than 0" in msg and "-2" in msg


def test_memory_not_a_number():
    field, msg = one_problem(edit("memory_gib = 2", 'memory_gib = "lots"'))
    assert field == "vms[0].memory_gib"
    assert "number" in msg and "'lots'" in msg


def test_unknown_workload_kind_lists_allowed_kinds():
    field, msg = one_problem(edit('kind = "uniform", dirty_pages_per_s = 30000, working_set_gib = 0.5',
                                  'kind = "bursty"'))
    assert field == "vms[0].workload"
    assert "bursty" in msg
    for kind in ("idle", "uniform", "hotset", "sweeper"):
        assert kind in msg


def test_workload_without_kind():
    field, msg = one_problem(edit('kind = "uniform", dirty_pages_per_s = 30000, working_set_gib = 0.5',
                                  "dirty_pages_per_s = 30000"))
    assert field == "vms[0].workload"
    assert "kind" in msg and "hotset" in msg


def test_bad_field_inside_workload_has_no_union_tag_in_path():
    field, msg = one_problem(edit("dirty_pages_per_s = 30000", "dirty_pages_per_s = -5"))
    assert field == "vms[0].workload.dirty_pages_per_s"
    assert "greater than or equal to 0" in msg


def test_missing_workload_field():
    field, msg = one_problem(edit("dirty_pages_per_s = 30000, ", ""))
    assert field == "vms[0].workload.dirty_pages_per_s"
    assert "required" in msg


def test_content_fractions_must_sum_to_one():
    field, msg = one_problem(edit("random = 0.3 }", "random = 0.4 }"))
    assert field == "vms[0].content"
    assert "1.1" in msg and "add up to 1" in msg
    assert "Value error" not in msg


def test_content_fraction_out_of_range():
    field, msg = one_problem(edit("zero = 0.2", "zero = 1.5"))
    assert field == "vms[0].content.zero"
    assert "1.5" in msg


def test_link_naming_unknown_nic():
    field, msg = one_problem(edit('to = "dst:eth0"', 'to = "dst:eth9"'))
    assert field == "network.links[0].to"
    assert "dst:eth9" in msg
    assert "known: dst:eth0, src:eth0, src:eth1" in msg


def test_link_naming_unknown_host():
    field, msg = one_problem(edit('from = "src:eth0"', 'from = "nowhere:eth0"'))
    assert field == "network.links[0].from"
    assert "nowhere:eth0" in msg


def test_link_reference_must_be_host_colon_nic():
    field, msg = one_problem(edit('from = "src:eth0"', 'from = "src-eth0"'))
    assert field == "network.links[0].from"
    assert "src-eth0" in msg


def test_missing_destination_host():
    field, msg = one_problem(edit('role = "destination"', 'role = "sub-host"'))
    assert field == "hosts"
    assert 'role = "destination"' in msg and "found 0" in msg


def test_two_sources():
    lines = problems(edit('role = "destination"', 'role = "source"'))
    assert any("hosts: " in l and '"source"' in l and "found 2" in l for l in lines), lines
    assert any('"destination"' in l and "found 0" in l for l in lines), lines


def test_unknown_host_role_lists_allowed_roles():
    field, msg = one_problem(edit('role = "destination"', 'role = "target"'))
    assert field == "hosts[1].role"
    assert "target" in msg and "destination" in msg and "sub-host" in msg


def test_no_link_from_source_to_destination():
    text = edit('from = "src:eth0"\nto = "dst:eth0"', 'from = "dst:eth0"\nto = "src:eth0"')
    field, msg = one_problem(text)
    assert field == "network.links"
    assert 'from = "src:<nic>"' in msg and 'to = "dst:<nic>"' in msg


def test_passthrough_nic_refused():
    field, msg = one_problem(edit('name = "web"', 'name = "web"\nnic = "passthrough"'))
    assert field == "vms[0].nic"
    assert "pass-through" in msg and "forbids live migration" in msg
    assert "virtio" in msg


def test_unknown_vm_nic_model():
    field, msg = one_problem(edit('name = "web"', 'name = "web"\nnic = "rtl8139"'))
    assert field == "vms[0].nic"
    assert "rtl8139" in msg and "virtio" in msg


def test_duplicate_host_names():
    lines = problems(edit('name = "dst"', 'name = "src"').replace('"dst:eth0"', '"src:eth0"'))
    assert any(l.startswith(f"{F}: hosts[1].name: ") and "unique" in l for l in lines), lines


def test_duplicate_vm_names():
    text = BASE + '\n[[vms]]\nname = "web"\nmemory_gib = 1\n'
    # The [migration] table precedes the second [[vms]]: still valid TOML.
    lines = problems(text)
    assert any(l.startswith(f"{F}: vms[1].name: ") and "unique" in l for l in lines), lines


def test_working_set_larger_than_memory():
    field, msg = one_problem(edit("working_set_gib = 0.5", "working_set_gib = 5"))
    assert field == "vms[0].workload.working_set_gib"
    assert "exceeds" in msg and "2" in msg


def test_vms_do_not_fit_on_destination():
    text = edit('role = "destination"\nmemory_gib = 64', 'role = "destination"\nmemory_gib = 1')
    field, msg = one_problem(text)
    assert field == "vms"
    assert "dst" in msg


def test_memory_scale_too_small_for_the_vm():
    field, msg = one_problem(edit("memory_scale = 0.015625", "memory_scale = 1e-9"))
    assert field == "vms[0].memory_gib"
    assert "memory_scale" in msg


def test_several_problems_give_one_line_each():
    text = edit("vcpus = 2", "vcpus = 0")
    text = edit("downtime_limit_ms = 300", "downtime_limit_ms = -1", text)
    text = edit("zero = 0.2", "zero = 7", text)
    lines = problems(text)
    fields = sorted(LINE.match(l)["field"] for l in lines)
    assert fields == ["migration.downtime_limit_ms", "vms[0].content.zero", "vms[0].vcpus"]


def test_missing_top_level_tables():
    lines = problems('name = "x"\n')
    fields = {LINE.match(l)["field"] for l in lines}
    assert {"hosts", "vms"} <= fields  # network may be left out: NICs are then paired by speed


def test_invalid_toml_is_one_line_with_the_file_name():
    field, msg = one_problem(edit("downtime_limit_ms = 300", "downtime_limit_ms = "))
    assert field == "not valid TOML"
    assert "line" in msg


# --- files -------------------------------------------------------------------

def test_load_reports_the_path(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text(edit("memory_gib = 2", "memory_gib = -2"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(p)
    assert info.value.lines == [f"{p}: vms[0].memory_gib: Input should be greater than 0 (got -2)"]


def test_missing_file(tmp_path):
    p = tmp_path / "nope.toml"
    with pytest.raises(ScenarioError) as info:
        load_scenario(p)
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith(f"{p}: no such file")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path)
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith(f"{tmp_path}: cannot read")


def test_not_utf8(tmp_path):
    p = tmp_path / "latin1.toml"
    p.write_bytes(BASE.replace("two hosts", "zw\xf6lf hosts").encode("latin-1"))
    with pytest.raises(ScenarioError) as info:
        load_scenario(p)
    assert len(info.value.lines) == 1
    assert info.value.lines[0].startswith(f"{p}: ")


# --- the CLI -----------------------------------------------------------------

def livemig(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(LIVEMIG), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_cli_validate_bad_file_exits_2_with_one_line_per_problem(tmp_path):
    text = edit("vcpus = 2", "vcpus = 0")
    text = edit('kind = "uniform", dirty_pages_per_s = 30000, working_set_gib = 0.5', 'kind = "bursty"', text)
    text = edit("downtime_limit_ms = 300", "downtime_limit_ms = -1", text)
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    expected = problems(text, str(bad))
    assert len(expected) == 3
    r = livemig("validate", bad)
    assert r.returncode == 2, r
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == expected
    assert r.stdout == ""


@pytest.mark.parametrize("content", [
    "this is = = not toml\n",
    BASE.replace('role = "destination"', 'role = "sub-host"'),
    BASE.replace('name = "web"', 'name = "web"\nnic = "passthrough"'),
])
def test_cli_validate_semantic_and_toml_errors(tmp_path, content):
    bad = tmp_path / "bad.toml"
    bad.write_text(content)
    r = livemig("validate", bad)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{bad}: "), lines


def test_cli_validate_missing_file(tmp_path):
    r = livemig("validate", tmp_path / "nope.toml")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert "nope.toml" in r.stderr and "no such file" in r.stderr


def test_cli_validate_quickstart_ok():
    r = livemig("validate", "scenarios/quickstart.toml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("scenarios/quickstart.toml: ok")
    assert r.stderr == ""


def test_cli_list_one_line_per_scenario():
    shipped = sorted((ROOT / "scenarios").rglob("*.toml"))
    r = livemig("list")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == len(shipped)
    assert [l.split()[0] for l in lines] == [str(p.relative_to(ROOT)) for p in shipped]
    quick = next(l for l in lines if l.startswith("scenarios/quickstart.toml"))
    assert "pre-copy" in quick


def test_cli_list_survives_blank_description(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cluster import cli

    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "blank.toml").write_text('name = "b"\ndescription = "  \\n"\n')
    (tmp_path / "scenarios" / "ok.toml").write_text('name = "o"\ndescription = "fine"\n')
    monkeypatch.setattr(cli, "SCENARIO_DIR", tmp_path / "scenarios")
    r = CliRunner().invoke(cli.app, ["list"])
    assert r.exit_code == 0, r.exception
    assert len(r.stdout.splitlines()) == 2


def test_gib_constant():
    assert GIB == 1 << 30
