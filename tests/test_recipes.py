"""The README's recipes (issue 13, item 9) and the README's commands.

- Every recipe rules file under rules/recipes/ loads (``condroute validate``, no unexpected warning,
  and the JSON Schema accepts it) and its cases file passes ``condroute check``; the README's
  ``condroute check RULES CASES`` commands say which cases file goes with which rules file, and
  every recipe file must be named by one of them. A recipe with a backend removed fails its cases.
- Every mitmdump / mitmweb / mitmproxy command in the README's code blocks listens on 127.0.0.1
  only, and every file, folder and section the README points at exists.
- (slow) Each recipe of the README is run as written: its mitmdump command (on a free port, with
  stand-in backends on free ports) and its console commands, whose output must be what the README
  shows.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from condroute.cli.main import main as condroute_main
from helpers import Proxy, ROOT, free_port

README = ROOT / "README.md"
RECIPES = ROOT / "rules" / "recipes"
PROXY_PROGRAMS = {"mitmdump", "mitmweb", "mitmproxy"}
SHELL_LANGS = {"sh", "bash", "shell"}
# warnings a recipe may have on purpose (jwt-decode.yaml decodes without verifying, and says so)
EXPECTED_WARNINGS = ("settings.jwt.verify is false",)


# -- reading the README ----------------------------------------------------------------------------
@dataclass
class Block:
    lang: str
    line: int                     # 1-based line of the opening fence
    lines: list[str]
    section: tuple[str, ...]      # the headings it is under: ("Recipes", "GeoIP, with a test database")


@dataclass
class ConsoleCommand:
    command: str
    output: list[str] = field(default_factory=list)


def _blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    headings: dict[int, str] = {}
    fence: Block | None = None
    for n, line in enumerate(text.splitlines(), 1):
        if fence is not None:
            if line.startswith("```"):
                blocks.append(fence)
                fence = None
            else:
                fence.lines.append(line)
            continue
        if line.startswith("```"):
            section = tuple(headings[k] for k in sorted(headings))
            fence = Block(line[3:].strip(), n, [], section)
            continue
        m = re.match(r"(#{1,6}) (.*)", line)
        if m:
            level = len(m.group(1))
            headings = {k: v for k, v in headings.items() if k < level}
            headings[level] = m.group(2).strip()
    assert fence is None, f"README.md:{fence.line}: a code block is never closed"
    return blocks


def _join_continuations(lines: list[str]) -> list[str]:
    out: list[str] = []
    cur = ""
    for line in lines:
        if line.endswith("\\"):
            cur += line[:-1] + " "
        else:
            out.append(cur + line)
            cur = ""
    if cur:
        out.append(cur)
    return out


def _console(block: Block) -> list[ConsoleCommand]:
    """The ``$ command`` lines of a block and the output lines that follow each."""
    cmds: list[ConsoleCommand] = []
    for line in _join_continuations(block.lines):
        if line.startswith("$ "):
            cmds.append(ConsoleCommand(line[2:]))
        elif cmds:
            cmds[-1].output.append(line)
    return cmds


def _commands(block: Block) -> list[str]:
    """The shell commands of a block: ``$`` lines anywhere, every line of a sh/bash block."""
    if block.lang in SHELL_LANGS:
        return [c for c in _join_continuations(block.lines) if c.strip() and not c.lstrip().startswith("#")]
    return [c.command for c in _console(block)]


def _readme() -> str:
    return README.read_text(encoding="utf-8")


def _check_pairs() -> list[tuple[str, str]]:
    """(rules, cases) of every ``condroute check RULES CASES`` command in the README's Recipes."""
    pairs = []
    for b in _blocks(_readme()):
        if b.section[1:2] != ("Recipes",):
            continue
        for cmd in _commands(b):
            words = shlex.split(cmd.split("|")[0])
            if words[:2] == ["condroute", "check"]:
                assert len(words) == 4, cmd
                pairs.append((words[2], words[3]))
    return pairs


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


# -- the recipes: validate and check ---------------------------------------------------------------
PAIRS = _check_pairs()


def test_every_recipe_file_is_in_a_readme_check_command():
    assert len(PAIRS) >= 8, PAIRS
    named_rules = {r for r, _ in PAIRS}
    named_cases = {c for _, c in PAIRS}
    on_disk = sorted(p.relative_to(ROOT).as_posix() for p in RECIPES.glob("*.yaml"))
    assert on_disk
    for f in on_disk:
        if f.endswith(".cases.yaml"):
            assert f in named_cases, f"{f} is run by no `condroute check` command in the README's Recipes"
        else:
            assert f in named_rules, f"{f} is run by no `condroute check` command in the README's Recipes"


@pytest.mark.parametrize("rules, cases", PAIRS, ids=[Path(c).stem for _, c in PAIRS])
def test_recipe_validates_and_its_cases_pass(rules, cases, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert (ROOT / rules).is_file(), rules
    assert (ROOT / cases).is_file(), cases
    assert condroute_main(["validate", rules]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"{rules}: OK: "), out + err
    warnings = [w for w in err.splitlines() if w.strip()]
    unexpected = [w for w in warnings if not any(e in w for e in EXPECTED_WARNINGS)]
    assert unexpected == [], unexpected

    status = condroute_main(["check", rules, cases])
    out, err = capsys.readouterr()
    m = re.search(r"^(\d+) passed, (\d+) failed$", out, re.M)
    assert m, out + err
    assert (status, int(m.group(2))) == (0, 0), out + err
    assert int(m.group(1)) >= 5, f"{cases}: a recipe deserves at least 5 cases\n{out}"


@pytest.mark.parametrize("rules", sorted({r for r, _ in PAIRS}))
def test_recipe_rules_match_the_json_schema(rules):
    jsonschema = pytest.importorskip("jsonschema")
    from condroute.cli.schema import build_schema
    v = jsonschema.Draft202012Validator(build_schema())
    doc = yaml.safe_load((ROOT / rules).read_text(encoding="utf-8"))
    assert [e.message for e in v.iter_errors(doc)] == []


def _broken(rules: Path, tmp_path: Path) -> Path:
    """The recipe with its first backend removed (or, for a route of one backend, its match
    conditions beside the host): what a careless edit does. Relative file paths made absolute."""
    doc = yaml.safe_load(rules.read_text(encoding="utf-8"))
    if not doc.get("routes") and doc.get("imports"):
        # an importing recipe: its first imported file loses its first rule
        first = doc["imports"][0]
        cluster = yaml.safe_load((rules.parent / first).read_text(encoding="utf-8"))
        del cluster["spec"]["rules"][0]
        (tmp_path / first).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / first).write_text(yaml.safe_dump(cluster, sort_keys=False), encoding="utf-8")
        (tmp_path / rules.name).write_text(rules.read_text(encoding="utf-8"), encoding="utf-8")
        return tmp_path / rules.name
    route = doc["routes"][0]
    if len(route["backends"]) > 1:
        del route["backends"][0]
    else:
        route["match"] = {k: v for k, v in route["match"].items() if k in ("host", "path", "methods")}
    settings = doc.get("settings") or {}
    if "geoip_db" in settings:
        settings["geoip_db"] = str((rules.parent / settings["geoip_db"]).resolve())
    out = tmp_path / rules.name
    out.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    _copy_local_files(rules.read_text(encoding="utf-8"), rules.parent, tmp_path)
    return out


@pytest.mark.parametrize("rules, cases", PAIRS, ids=[Path(c).stem for _, c in PAIRS])
def test_a_broken_recipe_fails_its_cases(rules, cases, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    broken = _broken(ROOT / rules, tmp_path)
    assert condroute_main(["validate", str(broken)]) == 0, capsys.readouterr()
    capsys.readouterr()
    assert condroute_main(["check", str(broken), cases]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^FAIL  ", out, re.M), out


# -- the README's commands and links ---------------------------------------------------------------
def _proxy_commands() -> list[tuple[int, str, list[str]]]:
    found = []
    for b in _blocks(_readme()):
        for cmd in _commands(b):
            words = shlex.split(cmd, comments=True)
            if any(os.path.basename(w) in PROXY_PROGRAMS for w in words):
                found.append((b.line, cmd, words))
    return found


def _listen_host(words: list[str]) -> str | None:
    for i, w in enumerate(words):
        if w == "--listen-host" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--listen-host="):
            return w.split("=", 1)[1]
    return None


def test_every_proxy_command_in_the_readme_listens_on_loopback_only():
    found = _proxy_commands()
    assert len(found) >= 10, found     # the README starts the proxy in many places; the parser finds them
    bad = [f"README.md block at line {line}: {cmd}" for line, cmd, words in found
           if _listen_host(words) != "127.0.0.1"]
    assert bad == []


def test_every_proxy_command_in_a_rules_file_comment_listens_on_loopback_only():
    found = []
    for f in sorted((ROOT / "rules").rglob("*.yaml")):
        # commands are indented in a comment ("#   mitmweb ..."); prose is not ("# mitmproxy intercepts")
        comments = [line[1:].strip() for line in f.read_text(encoding="utf-8").splitlines()
                    if line.startswith("#  ")]
        for cmd in _join_continuations(comments):
            if not cmd or os.path.basename(cmd.split()[0]) not in PROXY_PROGRAMS:
                continue       # prose
            words = shlex.split(cmd, comments=True)
            if words:
                found.append((f.relative_to(ROOT).as_posix(), cmd, words))
    assert len(found) >= 8, found
    assert [f"{f}: {cmd}" for f, cmd, words in found if _listen_host(words) != "127.0.0.1"] == []


def test_the_listen_host_check_sees_a_command_without_it():
    block = Block("sh", 1, [".venv/bin/mitmweb -s addon/conditional_routing.py \\", "  --set condroute_rules=x.yaml",
                            "# mitmproxy in a comment is no command"], ())
    cmds = _commands(block)
    assert len(cmds) == 1
    words = shlex.split(cmds[0], comments=True)
    assert _listen_host(words) is None
    assert _listen_host(shlex.split("mitmweb --listen-host=127.0.0.1")) == "127.0.0.1"
    console = Block("console", 1, ["$ mitmproxy --listen-host 0.0.0.0", "Server: mitmproxy 11"], ())
    assert _commands(console) == ["mitmproxy --listen-host 0.0.0.0"]


def test_every_file_and_section_the_readme_points_at_exists():
    text = _readme()
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    slugs = {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.*)$", prose, re.M)}
    missing = []
    for m in re.finditer(r"\]\(([^)\s]+)\)", prose):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):
            continue
        if target.startswith("#"):
            if target[1:] not in slugs:
                missing.append(f"section {target}")
        elif not (ROOT / target.split("#")[0]).exists():
            missing.append(target)
    for m in re.finditer(r"(?<![\w./-])((?:rules|tests|scripts|addon)/[\w./-]*)", text):
        path = m.group(1).rstrip(".")
        if not (ROOT / path).exists():
            missing.append(path)
    assert "rules-format.md" not in text, "the README points at rules-format.md, which is not in the project"
    assert sorted(set(missing)) == []


def test_readme_excerpts_are_copied_from_their_files():
    """A yaml block headed ``# FILE (excerpt)`` is lines of FILE, in order, as they are there."""
    seen = 0
    for b in _blocks(_readme()):
        m = re.match(r"# (\S+) \(excerpt\)$", b.lines[0]) if b.lang == "yaml" and b.lines else None
        if not m:
            continue
        seen += 1
        body = "\n".join(b.lines[1:])
        source = (ROOT / m.group(1)).read_text(encoding="utf-8")
        assert body in source, f"README.md:{b.line}: the excerpt of {m.group(1)} is not what the file says"
    assert seen >= 6


# -- (slow) the recipes run as the README shows ----------------------------------------------------
def _recipe_sections() -> dict[str, list[Block]]:
    out: dict[str, list[Block]] = {}
    for b in _blocks(_readme()):
        if b.section[1:2] == ("Recipes",) and len(b.section) >= 3:
            out.setdefault(b.section[2], []).append(b)
    return out


RECIPE_SECTIONS = _recipe_sections()
DEMO_PORTS = (9001, 9002, 9003)


def _rewrite_ports(text: str, ports: dict[int, int]) -> str:
    for old, new in ports.items():
        text = re.sub(rf"127\.0\.0\.1:{old}(?!\d)", f"127.0.0.1:{new}", text)
    return text


def _copy_rules(src: Path, ports: dict[int, int], tmp_path: Path) -> Path:
    """The rules file with its demo ports moved to the stand-ins' and its GeoIP database path absolute."""
    text = _rewrite_ports(src.read_text(encoding="utf-8"), ports)
    text = re.sub(r"(geoip_db: *)(\S+)", lambda m: m.group(1) + str((src.parent / m.group(2)).resolve()), text)
    copy = tmp_path / src.name
    copy.write_text(text, encoding="utf-8")
    for imported in (yaml.safe_load(text) or {}).get("imports") or ():   # imported files, beside it as before
        (tmp_path / imported).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.parent / imported, tmp_path / imported)
    _copy_local_files(text, src.parent, tmp_path)
    return copy


def _copy_local_files(text: str, src_dir: Path, tmp_path: Path) -> None:
    """The files and folders a recipe answers from (respond.file / respond.dir), beside its copy."""
    for m in re.finditer(r"\b(file|dir): *([^\s,}]+)", text):
        there, here = src_dir / m.group(2), tmp_path / m.group(2)
        if there.is_dir():
            shutil.copytree(there, here, dirs_exist_ok=True)
        elif there.is_file():
            here.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(there, here)


@pytest.mark.parametrize("section", sorted(RECIPE_SECTIONS))
def test_recipe_runs_as_the_readme_shows(section, echo, tmp_path):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    blocks = RECIPE_SECTIONS[section]
    starts = [c for b in blocks if b.lang in SHELL_LANGS for c in _commands(b)]
    assert len(starts) == 1, f"{section}: one mitmdump command per recipe, found {starts}"
    words = shlex.split(starts[0], comments=True)
    assert os.path.basename(words[0]) == "mitmdump" and _listen_host(words) == "127.0.0.1", starts[0]

    # stand-in backends on free ports, named as the README's demo command names them
    ports = {p: int(echo(f"port-{p}").rsplit(":", 1)[1]) for p in DEMO_PORTS}
    args: list[str] = []
    it = iter(words[1:])
    for w in it:
        if w == "--listen-host":
            next(it)
            continue
        if w.startswith("condroute_rules="):
            w = f"condroute_rules={_copy_rules(ROOT / w.split('=', 1)[1], ports, tmp_path)}"
        args.append(_rewrite_ports(w, ports))
    proxy = Proxy(args).start()
    try:
        commands = [c for b in blocks if b.lang == "console" for c in _console(b)]
        assert commands, section
        marker = "@@condroute-readme-command@@"
        script = "\n".join(f"echo {marker}\n" + _rewrite_ports(c.command, {8080: proxy.port}) for c in commands)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
        run = subprocess.run(["bash", "-c", script], cwd=str(ROOT), env=env, capture_output=True, text=True,
                             timeout=120)
        outputs = run.stdout.split(marker + "\n")[1:]
        assert len(outputs) == len(commands), run.stdout + run.stderr
        for c, got in zip(commands, outputs):
            got_lines = [line.rstrip() for line in got.splitlines()]
            want = [line.rstrip() for line in c.output if line.strip()]
            assert got_lines == want, f"{section}: $ {c.command}\n{run.stderr}\n{proxy.output()}"
    finally:
        proxy.stop()




def test_the_recipes_demo_backends_start_as_the_readme_says():
    """The README's stand-in command (on free ports instead of 9001-9003) serves what the recipes show."""
    starts = [c for b in _blocks(_readme()) if b.section[1:] == ("Recipes",) and b.lang in SHELL_LANGS
              for c in _commands(b) if "condroute.cli.demo" in c]
    assert len(starts) == 1, starts
    words = shlex.split(starts[0], comments=True)
    assert words[:3] == ["python", "-m", "condroute.cli.demo"], words
    ports = {p: free_port() for p in DEMO_PORTS}
    args = [_rewrite_ports(w, ports) for w in words[3:]]
    assert len(args) == len(DEMO_PORTS) and all(str(p) in " ".join(args) for p in ports.values()), args
    proc = subprocess.Popen([sys.executable, "-m", "condroute.cli.demo", *args], cwd=str(ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))   # never an *_proxy from the environment
    try:
        for old, new in ports.items():
            deadline = time.monotonic() + 20
            while True:
                try:
                    with direct.open(f"http://127.0.0.1:{new}/x", timeout=5) as r:
                        body = json.loads(r.read())
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(f"the demo backends did not start: {proc.communicate()[0]}") from None
                    time.sleep(0.05)
            assert (body["backend"], body["path"]) == (f"port-{old}", "/x")
    finally:
        proc.terminate()
        proc.wait(10)
