"""A corpus of malformed rules files (tests/malformed/*.yaml, one mistake each) with the exact
located messages they must produce (*.expected, FILE standing for the file's path): when loaded,
at mitmdump start-up (exit status 1, no traceback) and on hot reload (last good rules kept)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest
from mitmproxy.test import taddons

from condroute.errors import RulesError
from condroute.mitm.addon import ConditionalRouting
from condroute.rules import load_rules
from helpers import ADDON, MitmdumpForker, run_mitmdump_until_exit

CORPUS = Path(__file__).parent / "malformed"
FILES = sorted(p for p in CORPUS.iterdir() if p.suffix in (".yaml", ".json"))
GOOD = """version: 1
routes:
  - name: good
    backends: [{name: only, upstream: "http://127.0.0.1:9001"}]
"""


def good_text(f: Path, name: str = "good") -> str:
    if f.suffix == ".json":
        return json.dumps({"version": 1, "routes": [{"name": name, "backends": [
            {"name": "only", "upstream": "http://127.0.0.1:9001"}]}]})
    return GOOD.replace("good", name)


def expected(f: Path, path: str) -> list[str]:
    """The expected lines, FILE standing for the rules file and DIR for its folder (key files,
    GeoIP databases are named relative to the rules file)."""
    folder = str(Path(path).parent)
    return [line.replace("FILE", path, 1).replace("DIR", folder)
            for line in f.with_suffix(".expected").read_text().splitlines()]


def test_corpus_is_large_and_complete():
    assert len(FILES) >= 40
    assert {p.suffix for p in FILES} == {".yaml", ".json"}
    for f in FILES:
        assert f.with_suffix(".expected").exists(), f


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.stem)
def test_load_gives_the_exact_located_message(f: Path):
    with pytest.raises(RulesError) as ei:
        load_rules(str(f))
    assert [str(p) for p in ei.value.problems] == expected(f, str(f))


def test_every_file_stops_mitmdump_at_start_up_with_its_message():
    # mitmdump's entry point, forked from a process that imported mitmproxy once (MitmdumpForker):
    # 89 real start-ups took 80 s as separate processes
    with MitmdumpForker() as mitmdump:
        results = [(f, mitmdump.run(["-s", str(ADDON), "--set", f"condroute_rules={f}"])) for f in FILES]
    # the forked start-up behaves as the command does: one file through the real `mitmdump` too
    real = run_mitmdump_until_exit(["-s", str(ADDON), "--set", f"condroute_rules={FILES[0]}"], timeout=60)
    assert (real.returncode, expected(FILES[0], str(FILES[0]))[0] in real.stdout + real.stderr) == (1, True)
    for f, proc in results:
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, (f, out)
        for line in expected(f, str(f)):
            assert line in out, (f, line, out)
        assert "Traceback" not in out, out


def settled(path: Path) -> None:
    old = time.time() - 3600
    os.utime(path, (old, old))


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.stem)
def test_hot_reload_keeps_the_last_good_rules(f: Path, tmp_path: Path, caplog):
    target = tmp_path / f.name            # same name: files it names resolve beside it
    target.write_text(good_text(f))
    addon = ConditionalRouting()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, condroute_rules=str(target))
        good, generation = addon.rules, addon.generation
        assert good is not None and good.routes[0].name == "good"
        shutil.copyfile(f, target)
        settled(target)                   # the watcher installs only a settled version
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="condroute"):
            assert addon.check_reload() is False      # first seen: settling
            assert addon.check_reload() is False
        assert addon.rules is good and addon.generation == generation
        logged = caplog.text
        for line in expected(f, str(target)):
            assert line in logged, (line, logged)
        assert "keeping the last good rules" in logged
        # the next good edit is picked up again
        target.write_text(good_text(f, "better"))
        settled(target)
        assert addon.check_reload() is False
        assert addon.check_reload() is True and addon.rules.routes[0].name == "better"
