"""The documentation matches the code: the API reference is what the generator makes of the
proto now, the configuration reference names every setting and nothing else, every metric
and every rule is described, relative links lead somewhere, and so does every file path the
code's docstrings and comments name. No server, no database."""

from __future__ import annotations

import ast
import difflib
import io
import re
import sys
import tokenize
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

from quota_authority import policy as policy_module
from quota_authority.api import callers as callers_module
from quota_authority.cli import command_facts
from quota_authority.metrics import Metrics
from quota_authority.settings import (
    NOT_SETTINGS,
    Variable,
    documented_default,
    load_settings,
    variables,
    written,
)
from quota_authority.v1 import quota_authority_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PACKAGE = ROOT / "src" / "quota_authority"
CLIENT = ROOT / "clients" / "python"
sys.path.insert(0, str(ROOT / "scripts"))

import api_reference  # noqa: E402
from promql import alerting_rules  # noqa: E402

VARIABLE = re.compile(r"QUOTA_AUTHORITY_[A-Z0-9_]+")
FENCE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[([^\]]*)\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.MULTILINE)


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def without_code_blocks(text: str) -> str:
    return FENCE.sub("", text)


def section(text: str, heading: str) -> str:
    """The part of ``text`` under the heading ``heading`` (e.g. ``"## Metrics"``), code blocks
    included, up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = text.splitlines()
    start, end, fenced = None, len(lines), False
    for i, line in enumerate(lines):
        if re.match(r"[ \t]*(```|~~~)", line):
            fenced = not fenced
        elif fenced:
            continue
        elif start is None:
            if line.strip() == heading:
                start = i + 1
        else:
            match = re.match(r"(#{1,6})\s", line)
            if match and len(match.group(1)) <= level:
                end = i
                break
    assert start is not None, f"no section {heading!r}"
    return "\n".join(lines[start:end])


# --- the API reference ------------------------------------------------------------------


def test_api_reference_is_what_the_generator_makes_of_the_proto_now() -> None:
    expected = api_reference.render()
    actual = read("api.md")

    diff = "".join(
        list(
            difflib.unified_diff(
                actual.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/api.md",
                "generated",
            )
        )[:40]
    )
    assert actual == expected, (
        "docs/api.md is out of date with the proto; regenerate it with "
        f"`{api_reference.REGENERATE}`:\n{diff}"
    )


def test_api_reference_check_mode_accepts_the_current_file_and_refuses_a_stale_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "api.md"
    stale.write_text(read("api.md").replace("CheckAndConsume", "CheckAndConsum", 1))

    assert api_reference.main(["--check", str(DOCS / "api.md")]) == 0
    assert api_reference.main(["--check", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err


def test_api_reference_handles_nested_messages_oneofs_maps_enums_and_streams(
    tmp_path: Path,
) -> None:
    proto = tmp_path / "x" / "v1" / "x.proto"
    proto.parent.mkdir(parents=True)
    proto.write_text(
        """syntax = "proto3";
package x.v1;
import "google/protobuf/duration.proto";

// Watcher watches.
service Watcher {
  // Watch streams | both ways.
  rpc Watch(stream Outer) returns (stream Outer.Inner);
}

// Outer holds everything.
message Outer {
  // Inner is nested.
  message Inner {
    // A value.
    int32 v = 1;
  }
  // Color is a nested enum.
  enum Color {
    // Not set.
    COLOR_UNSPECIFIED = 0;
    COLOR_RED = 1; // Red, said after the value.
  }
  // Many inners.
  repeated Inner inners = 1;
  // Inners by name.
  map<string, Inner> by_name = 2;
  // One or the other.
  oneof choice {
    // A string.
    string text = 3;
    // A color.
    Color color = 4;
  }
  // How long.
  optional google.protobuf.Duration wait = 5;
}
""",
        encoding="utf-8",
    )

    markdown = api_reference.render(proto, tmp_path)

    assert "`rpc Watch(stream Outer) returns (stream Outer.Inner)`" in markdown
    assert "Watch streams \\| both ways." in markdown  # a pipe inside a table cell
    assert "### Outer.Inner" in markdown
    assert "### Outer.Color" in markdown
    assert "| `inners` | 1 | repeated [`Outer.Inner`](#outerinner) | Many inners. |" in markdown
    assert "map<`string`, [`Outer.Inner`](#outerinner)>" in markdown
    assert "| `color` | 4 | enum [`Outer.Color`](#outercolor) (oneof `choice`) |" in markdown
    assert "Oneof `choice`: at most one of `text`, `color` is set." in markdown
    assert "optional [`google.protobuf.Duration`](" in markdown
    assert "| `COLOR_RED` | 1 | Red, said after the value. |" in markdown
    assert "ByNameEntry" not in markdown  # map entries are not messages of their own
    assert markdown == api_reference.render(proto, tmp_path)  # deterministic


# --- the configuration reference --------------------------------------------------------


class _RecordingEnvironment(dict[str, str]):
    """An empty environment that remembers every variable asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: set[str] = set()

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def variables_read_by_load_settings() -> set[str]:
    environment = _RecordingEnvironment()
    load_settings(environment)
    return environment.asked


def configuration_reference() -> str:
    return section(read("operations.md"), "## Configuration reference")


def table_rows(text: str) -> dict[str, list[str]]:
    """The cells of each table row that starts with a variable, by that variable."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("| `QUOTA_AUTHORITY_"):
            cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
            rows[cells[0].strip("`")] = cells
    return rows


def shown(default: str) -> str:
    return default if default == "unset" else f"`{default}`"


def minimum_note(variable: Variable) -> str | None:
    """How the docs write the variable's minimum: ``(≥ 1)``."""
    return None if variable.minimum is None else f"(≥ {written(variable.minimum)})"


def test_load_settings_reads_every_declared_variable_and_no_other() -> None:
    declared = {variable.name for variable in variables().values()}
    assert variables_read_by_load_settings() == declared


def test_the_configuration_reference_has_each_variable_with_its_field_default_and_minimum():
    rows = table_rows(configuration_reference())

    for field, variable in variables().items():
        assert variable.name in rows, f"docs/operations.md lacks {variable.name}"
        _, documented_field, default, meaning = rows[variable.name]
        assert documented_field.startswith(f"`{field}`"), (variable.name, documented_field)
        assert default == shown(documented_default(field)), (variable.name, default)
        note = minimum_note(variable)
        assert note is None or note in meaning, f"{variable.name}: the docs lack {note}"
    assert set(rows) == {v.name for v in variables().values()}


def test_the_readme_table_has_each_variable_with_its_default_and_minimum() -> None:
    rows = table_rows(section((ROOT / "README.md").read_text(encoding="utf-8"), "## Configuration"))

    for field, variable in variables().items():
        assert variable.name in rows, f"the README's table lacks {variable.name}"
        _, default, meaning = rows[variable.name]
        assert default == shown(documented_default(field)), (variable.name, default)
        note = minimum_note(variable)
        assert note is None or note in meaning, f"{variable.name}: the README lacks {note}"
    assert set(rows) == {v.name for v in variables().values()}


# The misspelling docs/operations.md shows refused.
MISSPELLED_EXAMPLE = "QUOTA_AUTHORITY_DATABSE_URL"


def test_every_variable_named_in_operations_exists() -> None:
    named = set(VARIABLE.findall(read("operations.md")))

    known = variables_read_by_load_settings() | NOT_SETTINGS.keys() | {MISSPELLED_EXAMPLE}
    unknown = sorted(named - known)
    assert not unknown, f"docs/operations.md names variables the code does not read: {unknown}"


def test_the_configuration_reference_lists_the_variables_let_through_that_are_no_setting():
    listed = set(re.findall(r"^- `(QUOTA_AUTHORITY_[A-Z0-9_]+)`:", configuration_reference(), re.M))
    assert listed == set(NOT_SETTINGS)


def keys_accepted_by_the_policy_and_callers_files() -> set[str]:
    """Every section and key the two TOML files accept: the sets policy.py and
    api/callers.py pass to ``only`` and the sections ``policy_from_mapping`` knows."""
    keys: set[str] = set()
    for module in (policy_module, callers_module):
        keys |= _keys_accepted_by(Path(module.__file__ or "").read_text(encoding="utf-8"))
    assert {"tiers", "week", "callers", "max_before_reply"} <= keys  # the walk found them
    return keys


def _keys_accepted_by(source: str) -> set[str]:
    keys: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        sets: list[ast.expr] = []
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "only":
            sets.append(node.args[2])
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "known" for t in node.targets
        ):
            sets.append(node.value)
        for literal in sets:
            assert isinstance(literal, ast.Set), ast.dump(literal)
            keys.update(e.value for e in literal.elts if isinstance(e, ast.Constant))
    return keys


def test_every_key_of_the_policy_and_callers_files_is_in_the_configuration_reference() -> None:
    reference = configuration_reference()

    missing = sorted(
        key
        for key in keys_accepted_by_the_policy_and_callers_files()
        if not re.search(rf"(`|\[){re.escape(key)}(`|\])", reference)
    )
    assert not missing, f"docs/operations.md's configuration reference lacks the keys {missing}"


# --- metrics ----------------------------------------------------------------------------


def registered_metrics() -> dict[str, tuple[str, ...]]:
    """Each metric name as Prometheus exposes it, with its label names."""
    metrics = Metrics()
    exposed: dict[str, tuple[str, ...]] = {}
    for collector in vars(metrics).values():
        if not isinstance(collector, MetricWrapperBase):
            continue
        (family,) = collector.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        exposed[name] = tuple(getattr(collector, "_labelnames", ()))
    names = {family.name for family in metrics.registry.collect()}
    assert len(exposed) == len(names), "a metric is registered outside Metrics' attributes"
    return exposed


def test_every_metric_and_its_labels_are_in_operations() -> None:
    metrics_section = section(read("operations.md"), "## Metrics")

    for name, labels in registered_metrics().items():
        rows = [line for line in metrics_section.splitlines() if f"`{name}`" in line]
        assert rows, f"docs/operations.md's Metrics section lacks {name}"
        for label in labels:
            assert f"`{label}`" in rows[0], f"the row of {name} lacks its label `{label}`"


def test_every_metric_named_in_operations_is_registered() -> None:
    metrics_section = section(read("operations.md"), "## Metrics")
    registered = set(registered_metrics())
    series = {
        base + suffix
        for base in registered
        for suffix in ("", "_bucket", "_count", "_sum", "_created")
    }

    named = set(re.findall(r"quota_authority_[a-z0-9_]+", metrics_section))
    unknown = sorted(named - series)
    assert not unknown, f"docs/operations.md names metrics the code does not register: {unknown}"


# --- rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("number", range(1, 14))
def test_every_rule_has_a_section_in_rules(number: int) -> None:
    headings = re.findall(r"^## (R\d+)\b", read("rules.md"), re.MULTILINE)

    assert f"R{number}" in headings, f"docs/rules.md has no '## R{number} …' section"


def test_every_reason_the_service_answers_is_in_rules() -> None:
    rules = read("rules.md")

    missing = [
        value.name
        for value in pb.Reason.DESCRIPTOR.values
        if value.number != 0 and f"`{value.name}`" not in rules
    ]
    assert not missing, f"docs/rules.md never mentions {missing}"


# --- the command line -------------------------------------------------------------------

# A row of a Markdown table, split on the pipes that are not escaped (``seller\|creator``).
CELL_BORDER = re.compile(r"(?<!\\)\|")


def test_the_table_of_commands_gives_each_its_declared_role_and_exit_statuses() -> None:
    stated = {}
    for line in section(read("operations.md"), "## Command line").splitlines():
        cells = [cell.strip() for cell in CELL_BORDER.split(line)[1:-1]]
        if len(cells) == 4 and cells[0].startswith("`"):  # command | role | what | exit status
            stated[cells[0].strip("`").split()[0]] = (cells[1], cells[3])

    declared = {
        name: (
            facts.role or "",
            ", ".join(f"{status.code} {status.brief}".strip() for status in facts.statuses),
        )
        for name, facts in command_facts().items()
    }
    assert stated == declared


# --- links ------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for _, heading in HEADING.findall(without_code_blocks(path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    text = without_code_blocks(path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return [
        target
        for _, target in LINK.findall(text)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # http:, https:, mailto:, …
    ]


@pytest.mark.parametrize("document", sorted(DOCS.glob("*.md")), ids=lambda p: p.name)
def test_relative_links_lead_to_files_and_headings_that_exist(document: Path) -> None:
    broken = []
    for target in relative_links(document):
        file_part, _, fragment = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading with that anchor in {linked.name}")

    assert not broken, f"{document.name}: broken links: {broken}"


def test_the_documents_exist() -> None:
    for name in ("api.md", "architecture.md", "operations.md", "rules.md"):
        assert (DOCS / name).is_file(), f"docs/{name} is missing"


# --- file paths named in the code -------------------------------------------------------

# A file path: folders, a name, and the extension of a kind of file the repository holds,
# with a heading's anchor if it has one (docs/rules.md#r10-starters-pack).
NAMED_PATH = re.compile(
    r"(?<![\w./:-])((?:[\w.-]+/)*[\w-]+(?:\.[\w-]+)*\.(?:md|py|pyi|toml|sh|proto|json|ini|mako|sql|ya?ml))"
    r"(?:#([\w-]+))?(?![\w/])"
)


def docstrings_and_comments(source: str) -> Iterator[tuple[int, str]]:
    """Each docstring (of the module, a class or a function) and comment of ``source``, with
    the line it starts on."""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            yield token.start[0], token.string
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring is not None:
                yield node.body[0].lineno, docstring


def broken_paths(files: Iterable[Path], roots: Sequence[Path]) -> list[str]:
    """``file:line: path`` for every file path named in a docstring or comment of ``files``
    that leads to no file under any of ``roots`` or the naming file's own folder, or, after
    a ``#``, to no heading of that Markdown file."""
    broken = []
    for file in files:
        shown = file.relative_to(ROOT) if file.is_relative_to(ROOT) else file.name
        for line, text in docstrings_and_comments(file.read_text(encoding="utf-8")):
            for path, fragment in NAMED_PATH.findall(text):
                found = [base / path for base in (*roots, file.parent) if (base / path).is_file()]
                if not found:
                    broken.append(f"{shown}:{line}: {path}: no such file")
                elif fragment and found[0].suffix == ".md" and fragment not in anchors(found[0]):
                    broken.append(f"{shown}:{line}: {path}#{fragment}: no such heading")
    return broken


def package_sources() -> list[Path]:
    """The server's and the client distribution's code, the generated stubs left out."""
    generated = CLIENT / "src" / "quota_authority" / "v1"
    sources = [*PACKAGE.rglob("*.py"), *CLIENT.glob("src/quota_authority/**/*.py")]
    sources += CLIENT.glob("tests/*.py")
    return sorted(p for p in sources if generated not in p.parents)


def test_every_file_path_named_in_the_code_exists() -> None:
    broken = broken_paths(package_sources(), roots=(ROOT, PACKAGE))

    assert not broken, f"docstrings and comments name files that do not exist: {broken}"


def test_a_made_up_path_in_a_docstring_or_comment_is_caught(tmp_path: Path) -> None:
    source = tmp_path / "made_up.py"
    source.write_text(
        '"""The rules of docs/rules.md#r10-starters-pack, measured in BENCHMARKS.md;\n'
        'see docs/no-such-page.md and docs/rules.md#r99-no-such-rule."""\n'
        "\n"
        "# store/ledger.py is real, scripts/made_up.py is not\n"
        'MESSAGE = "a string that is no docstring names docs/gone.md"\n',
        encoding="utf-8",
    )

    assert broken_paths([source], roots=(ROOT, PACKAGE)) == [
        "made_up.py:4: scripts/made_up.py: no such file",
        "made_up.py:1: docs/no-such-page.md: no such file",
        "made_up.py:1: docs/rules.md#r99-no-such-rule: no such heading",
    ]


def test_no_document_promises_that_unavailable_granted_nothing() -> None:
    """After a failed commit the change may have landed: UNAVAILABLE's outcome is unknown."""
    for document in [ROOT / "README.md", ROOT / "RELIABILITY.md", *DOCS.glob("*.md")]:
        text = " ".join(document.read_text(encoding="utf-8").split()).lower()
        for match in re.finditer(r"unavailable[^.]{0,120}\.\s*nothing was granted", text):
            raise AssertionError(f"{document.name} promises too much: {match.group(0)!r}")


# --- the alerting rules (deploy/prometheus) ---------------------------------------------


def alert_table() -> dict[str, list[str]]:
    """The rows of operations.md's "What to alert on" table, by alert name: their cells,
    escaped pipes unescaped."""
    rows: dict[str, list[str]] = {}
    for line in section(read("operations.md"), "### What to alert on").splitlines():
        cells = [cell.strip().replace("\\|", "|") for cell in CELL_BORDER.split(line)[1:-1]]
        if cells and re.fullmatch(r"`\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells
    return rows


def test_the_alert_table_in_operations_is_the_rule_file() -> None:
    rules = alerting_rules()
    table = alert_table()

    assert list(table) == [rule["alert"] for rule in rules], (
        "docs/operations.md's 'What to alert on' lists other alerts than "
        "deploy/prometheus/quota-authority.rules.yaml"
    )
    for rule in rules:
        _, expr, for_, severity, _ = table[rule["alert"]]
        assert expr == f"`{' '.join(rule['expr'].split())}`", (
            f"{rule['alert']}: the table's PromQL is not the rule file's"
        )
        assert for_ == rule.get("for", "—"), f"{rule['alert']}: the table's `for` differs"
        assert severity == rule["labels"]["severity"], f"{rule['alert']}: severity differs"


def test_every_alert_runbook_leads_to_a_section_of_operations() -> None:
    headings = anchors(DOCS / "operations.md")

    for rule in alerting_rules():
        document, _, anchor = rule["annotations"]["runbook"].partition("#")
        assert document == "docs/operations.md", rule["alert"]
        assert anchor in headings, f"{rule['alert']}: no heading #{anchor} in operations.md"
