"""The README and the presets match the code: the commands they show run, the overrides they show
are real keys with valid values that change something, and the files they cite exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from hdmnet import cli
from hdmnet.config import load_params
from hdmnet.identity import lookup

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PRESETS = [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))]
# `-s KEY=VALUE` (the CLI), `-S KEY=VALUE` (DVC), `set=KEY=VALUE` or `set=[KEY=VALUE, "KEY=VALUE"]`
# (Snakemake), with dotted keys; a value is a word or a flow list.
OVERRIDE = re.compile(
    r"""(?:-[sS] '?|set=\[?|, ")([a-z_0-9]+(?:\.[a-z_0-9]+)+)=(\[[^\]]*\]|[^\s'"`,\]]+)"""
)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def hdmnet_commands(block: str) -> list[list[str]]:
    """Every `hdmnet ...` command of a bash block, as arguments: continuation lines joined,
    comments dropped, shell variables set in the block expanded, `&&` chains split."""
    block = block.replace("\\\n", " ")
    variables: dict[str, str] = {}
    commands = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if len(words) == 1 and re.fullmatch(r"[A-Z]+=.*", words[0]):
            name, _, value = words[0].partition("=")
            variables[name] = value
            continue
        expanded: list[str] = []
        for word in words:
            expanded += shlex.split(variables[word[1:]]) if word[1:] in variables else [word]
        command: list[str] = []
        for word in [*expanded, "&&"]:
            if word == "&&":
                if command[:1] == ["hdmnet"]:
                    commands.append(command)
                command = []
            else:
                command.append(word)
    return commands


def test_every_hdmnet_command_in_the_readme_parses():
    """Complete commands parse with the CLI's own parser; elided ones (`...`) at least name a
    stage first, before its options (`hdmnet --params` is not a command)."""
    commands = [c for block in bash_blocks(README) for c in hdmnet_commands(block)]
    assert len(commands) >= 10
    parser = cli.build_parser()
    for command in commands:
        assert command[1] in cli.COMMANDS, f"README: {shlex.join(command)}: not a stage"
        if "..." in command:
            continue
        try:
            parser.parse_args(command[1:])
        except SystemExit:
            pytest.fail(f"README: {shlex.join(command)} does not parse")


def test_readme_overrides_are_real_keys_with_valid_values_that_change_something():
    """An example override must be a key the schema knows, with a value it accepts, and a value
    other than params.yaml's (an example that sets the value already in force shows nothing)."""
    default = load_params(ROOT / "params.yaml")
    found = OVERRIDE.findall(README)
    assert len(found) >= 8, found
    for key, value in found:
        params = load_params(ROOT / "params.yaml", [f"{key}={value}"])
        shown = f"README: {key}={value}"
        assert value_at(params.raw, key) != value_at(default.raw, key), f"{shown}: no change"


def value_at(raw: dict, key: str) -> object:
    try:
        return lookup(raw, key)
    except KeyError:
        return None  # a free-form mapping without that entry


def test_readme_shows_the_one_override_model_for_every_way_in():
    """Files over params.yaml then key=value pairs, for a stage, the demo, Snakemake and DVC."""
    section = README.split("**Overrides, the same everywhere.**")[1].split("\n## ")[0]
    (block,) = bash_blocks(section)
    ways = ("hdmnet train ", "hdmnet demo ", "--configfile my.yaml", "--config set=", "dvc exp")
    for way in ways:
        assert way in block, way


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.name)
def test_presets_cite_only_files_that_exist(preset):
    comments = "\n".join(
        line.split("#", 1)[1] for line in preset.read_text().splitlines() if "#" in line
    )
    for name in re.findall(r"[\w./-]+\.(?:md|yaml|py)\b", comments):
        candidates = [ROOT / name, ROOT / "src" / name]
        assert any(path.exists() for path in candidates), f"{preset.name} cites {name}"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda path: path.name)
def test_commands_shown_in_presets_run(preset, monkeypatch, capsys):
    """`hdmnet <stage> ...` in a preset's comments: a stage (or the `<stage>` placeholder) comes
    first, and its options then work, shown here with `hdmnet config`."""
    comments = [line for line in preset.read_text().splitlines() if line.startswith("#")]
    command = r"hdmnet ((?:<stage>|-|[a-z][a-z-]*(?=[ `]|$))[^`,]*)"
    shown = [m for line in comments for m in re.findall(command, line)]
    assert shown, f"{preset.name} shows no command"
    monkeypatch.chdir(ROOT)
    for text in shown:
        stage, *options = text.replace("...", "").split()
        assert stage in (*cli.COMMANDS, "<stage>"), f"{preset.name}: hdmnet {text}"
        # Placeholders (<...>, key=value) go, with the option they are the value of.
        text = re.sub(r"(?:-s )?(?:<[^>]*>|key=value)", " ", " ".join(options))
        options = text.split()
        if options:
            assert cli.main(["config", *options]) == 0, f"{preset.name}: hdmnet {text}"
    capsys.readouterr()


def test_the_readme_and_the_paper_preset_name_the_imagenet_weight_files():
    """Where the ImageNet weights come from and the file names the official code loads: the
    README says it, the paper preset expects those files, and `hdmnet check` looks for them."""
    from hdmnet.preflight import WEIGHT_FILES, WEIGHT_SOURCES

    section = README.split("**ImageNet weights**")[1].split("\n\n")[0]
    for name in WEIGHT_FILES.values():
        assert f"`{name}`" in section, name
    assert "hszhao/semseg" in section and "initmodel" in section
    assert "https://download.pytorch.org/models/vgg16_bn-6c64b313.pth" in section
    assert "download.pytorch.org/models/vgg16_bn-6c64b313.pth" in WEIGHT_SOURCES["vgg16"]
    paper = load_params(ROOT / "presets" / "paper.yaml")
    for backbone in paper.grid.backbones:
        assert Path(paper.model.pretrained[backbone]).name == WEIGHT_FILES[backbone]
