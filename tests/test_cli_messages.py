"""What the `optwatch` command says to a user who followed the README literally: one-line errors, a mistyped
command named, defaults in `--help`, and a README that matches the commands, the code and the dashboard."""

from __future__ import annotations

import os
import re

from conftest import ROOT, optwatch

README = (ROOT / "README.md").read_text()
COMMANDS = ("run", "attach", "ls", "ctl", "replay", "runs", "compare", "export")


def readme_section(title: str) -> str:
    return README.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def wide_help(*command: str) -> str:
    """`optwatch COMMAND --help`, each option on one line (argparse wraps at $COLUMNS)."""
    result = optwatch(*command, "--help", env={**os.environ, "COLUMNS": "400"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout


def test_a_malformed_flag_is_one_line_naming_its_command_and_exit_2_for_every_command():
    """The README promises bad input a one-line message; argparse printed 8 lines of usage above it."""
    typed = {
        ("run", "--headles", "x.py"): "optwatch run: error: unrecognized arguments: --headles",
        ("run", "--budget", "-1", "x.py"): "optwatch run: error: argument --budget: expected a percentage from 0 to "
        "100, got '-1'",
        ("run", "--profile-at", "10:0", "x.py"): "optwatch run: error: argument --profile-at: COUNT must be from 1",
        ("run",): "optwatch run: error: the following arguments are required: SCRIPT",
        ("attach", "--bogus"): "optwatch attach: error: unrecognized arguments: --bogus",
        ("attach", "--token", "a", "--token-file", "b"): "optwatch attach: error: argument --token-file: not allowed",
        ("ctl", "some-run"): "optwatch ctl: error: the following arguments are required: COMMAND",
        ("ctl", "some-run", "stop", "--timeout", "soon"): "optwatch ctl: error: argument --timeout: expected a number",
        ("ls", "--bogus"): "optwatch ls: error: unrecognized arguments: --bogus",
        ("replay",): "optwatch replay: error: the following arguments are required: RUN",
        ("runs", "--bogus"): "optwatch runs: error: unrecognized arguments: --bogus",
        ("compare",): "optwatch compare: error: the following arguments are required: RUN",
        ("export", "some-run", "--parquet", "x"): "optwatch export: error: unrecognized arguments: --parquet x",
    }
    for command, said in typed.items():
        result = optwatch(*command)
        assert result.returncode == 2 and result.stdout == "", (command, result.stdout)
        [line] = result.stderr.splitlines()
        assert line.startswith(said) and line.endswith(f"(see optwatch {command[0]} --help)"), (command, line)
    # --help itself is argparse's whole usage, as before
    helped = optwatch("run", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: optwatch run [-h] [--headless]")
    assert "positional arguments:" in helped.stdout and "the dashboard in a browser:" in helped.stdout


def test_a_mistyped_command_is_named_on_the_missing_scripts_line():
    for typed, meant in ((("rnu",), "run"), (("atach", "x"), "attach"), (("rpelay", "x"), "replay")):
        result = optwatch(*typed)
        assert result.returncode == 2 and result.stderr == (
            f"optwatch: no such script: {typed[0]} (did you mean `optwatch {meant}`?)\n"
        )
    # a path, or a word close to no command, is a missing script and nothing more
    for typed in ("rnu.py", "no/such/rnu", "train"):
        result = optwatch(typed)
        assert result.returncode == 2 and result.stderr == f"optwatch: no such script: {typed}\n"


def test_help_says_each_default_the_command_uses():
    """The figures are those the README, docs/gradients.md, docs/cost.md and docs/controls.md give."""
    run = " ".join(wide_help("run").split())
    assert "--budget PERCENT share of the step time optwatch may take (default 1%)" in run
    assert "--grad-every N per-layer gradient statistics every N detail steps (default 1; 0: off)" in run
    assert "--grad-update-mb MB memory for the weight copy behind update ratios (default 256;" in run
    assert "--summary-every S headless summary interval (s, default 5)" in run
    assert "--summary-every S headless summary interval (s, default 5)" in " ".join(wide_help("attach").split())
    assert "--timeout S how long to wait (s, default 15)" in " ".join(wide_help("ctl").split())
    runs = wide_help("runs")
    assert "as above" not in runs
    assert "the runs directory (default: $OPTWATCH_RUNS_DIR, else ./optwatch-runs)" in runs


def test_the_readme_command_line_names_every_option_of_every_command():
    """Each command's block in the README's Command line section (its lines and the indented ones under them)
    names every option its `--help` lists."""
    blocks: dict[str, str] = {}
    command = ""
    listing = readme_section("Command line").split("```")[1]
    for line in listing.splitlines():
        if line.startswith("optwatch "):
            word = line.split()[1]
            command = "run" if word == "SCRIPT" else word
        blocks[command] = blocks.get(command, "") + line + "\n"
    assert sorted(blocks) == sorted(["", *COMMANDS])
    for command in COMMANDS:
        options = re.findall(r"^  (?:-\w, )?(--[\w-]+)", wide_help(command), re.MULTILINE)
        missing = [option for option in options if option != "--help" and option not in blocks[command]]
        assert not missing, (command, missing)


def test_the_readme_map_names_every_module():
    """Each module and style sheet under src/optwatch is named in the Map of the code, in its folder's row
    (a widget is one of `widgets/`, one per file)."""
    rows = {}
    for row in readme_section("Map of the code").splitlines():
        if row.startswith("| `src/optwatch/"):
            path, _, what = row[2:].partition(" | ")
            rows[path] = path + " " + what
    package = ROOT / "src" / "optwatch"
    unnamed = []
    for module in sorted([*package.rglob("*.py"), *package.rglob("*.tcss")]):
        relative = module.relative_to(package)
        if "widgets" in relative.parts or (len(relative.parts) > 1 and module.name == "__init__.py"):
            continue
        if len(relative.parts) == 1:
            named = any(f"`{module.name}`" in path or f"/{module.name}`" in path for path in rows)
        else:
            folder = f"`src/optwatch/{'/'.join(relative.parts[:-1])}/`"
            named = any(f"`{module.name}`" in text for path, text in rows.items() if path.startswith(folder))
        if not named:
            unnamed.append(str(relative))
    assert not unnamed, unnamed


async def test_the_readme_keys_say_which_key_the_footer_leaves_out_and_when_the_gradient_chart_shows():
    """Checked on the dashboard itself: at 33 rows the Overview has the loss chart alone, at 34 the
    gradient-norm chart under it; and the footer never shows `y`, which the README's Keys then say."""
    from textual.widgets import Footer

    from optwatch.app.app import OptwatchApp
    from optwatch.store import Store

    keys = readme_section("Keys")
    overview = next(row for row in keys.splitlines() if row.startswith("| `o` / `l` |"))
    log_scale = next(row for row in keys.splitlines() if row.startswith("| `y` |"))
    shown = {}
    for rows in (33, 34):
        app = OptwatchApp.for_store(Store())
        async with app.run_test(size=(140, rows)) as pilot:
            await pilot.pause()
            shown[rows] = (app.query_one("#loss-chart").display, app.query_one("#grad-chart").display)
            footer_keys = {key.key for key in app.query_one(Footer).query("FooterKey")}
            assert "y" not in footer_keys and "z" in footer_keys, footer_keys
    assert shown == {33: (True, False), 34: (True, True)}
    assert "the gradient-norm chart under it in a terminal of 34 rows or more" in overview
    assert "not in the footer" in log_scale
    assert "the footer shows the keys the screen does\nnot, but for `y`" in keys
