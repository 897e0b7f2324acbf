"""YAML to plain Python data, remembering the line of every key and list item.

``yaml.safe_load`` throws positions away and silently keeps the last of two duplicate
keys, so an error could only say *what* is wrong, not *where*, and a pasted-twice
``port:`` would go unnoticed. Here the document is composed into PyYAML's node tree
(safe resolver, so only plain YAML types), and the tree is turned into dicts and lists
by hand while recording ``lines[key_path]``: the 1-based line of the key for a mapping
value, of the item for a list item. Scalars are still built by PyYAML's SafeConstructor,
so ``on``/``1e3``/dates mean exactly what they mean to ``safe_load``.

Nothing here raises: every problem becomes a :class:`Problem` with its line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from apigate.config.errors import KeyPath, Problem, describe

MAX_NODES = 100_000
"""Aliases can make a small file expand exponentially ("billion laughs"); stop early."""

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_INSIDE = re.compile(r"while (?:scanning|parsing) (an? .+)")


@dataclass
class Document:
    """The parsed file: plain data, key-path lines, problems; ``fatal`` if data is unusable."""

    data: object = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    fatal: bool = False

    def line_of(self, path: KeyPath) -> int | None:
        """Line of ``path``, else of its nearest ancestor present in the file."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None


def parse_yaml(text: str) -> Document:
    """Parse one YAML document; syntax errors become a fatal problem with their line."""
    doc = Document()
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as e:  # ReaderError: a control character in the text
        doc.problems.append(Problem(_reader_line(text, e), (), f"YAML syntax error: {_yaml_message(e)}"))
        doc.fatal = True
        return doc
    try:
        root = loader.get_single_node()
        if root is not None:
            doc.lines[()] = root.start_mark.line + 1
            doc.data = _Builder(loader, doc).build(root, ())
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        doc.problems.append(Problem(line, (), f"YAML syntax error: {_yaml_message(e)}"))
        doc.fatal = True
    except yaml.YAMLError as e:
        doc.problems.append(Problem(_reader_line(text, e), (), f"YAML syntax error: {_yaml_message(e)}"))
        doc.fatal = True
    except RecursionError:
        doc.problems.append(Problem(None, (), "YAML structure is nested too deeply"))
        doc.fatal = True
    finally:
        loader.dispose()
    return doc


def _yaml_message(e: yaml.YAMLError) -> str:
    """PyYAML's problem text without its source excerpt (which could show a secret)."""
    if isinstance(e, yaml.MarkedYAMLError):
        problem = e.problem or "invalid YAML"
        if e.problem_mark is not None:
            problem += f" (column {e.problem_mark.column + 1})"
        if "'\\t'" in problem:
            problem += "; indent with spaces, YAML does not allow tabs"
        if not e.context:
            return problem
        line = e.context_mark.line + 1 if e.context_mark is not None else None
        inside = _INSIDE.fullmatch(e.context)
        if inside and line:  # "while scanning a quoted scalar"
            return f"{problem}, in {inside.group(1)} that starts on line {line}"
        if e.context.startswith("while "):  # "while scanning for the next token"
            return problem
        where = f" (line {line})" if line else ""
        return f"{e.context}{where}, {problem}"  # "expected a single document..., but found another"
    if isinstance(e, yaml.reader.ReaderError):
        return f"character U+{e.character:04X} is not allowed in YAML"
    return str(e).splitlines()[0]


def _reader_line(text: str, e: yaml.YAMLError) -> int | None:
    if isinstance(e, yaml.reader.ReaderError):
        return text.count("\n", 0, e.position) + 1
    return None


class _Builder:
    """Turns composed nodes into dicts/lists, filling ``doc.lines`` and ``doc.problems``."""

    def __init__(self, loader: yaml.SafeLoader, doc: Document) -> None:
        self.loader = loader
        self.doc = doc
        self.active: set[int] = set()  # ids of collection nodes being built (recursion guard)
        self.count = 0

    def problem(self, node: Node, path: KeyPath, message: str) -> None:
        self.doc.problems.append(Problem(node.start_mark.line + 1, path, message))

    def build(self, node: Node, path: KeyPath) -> object:
        self.count += 1
        if self.count > MAX_NODES:
            if self.count == MAX_NODES + 1:
                self.problem(node, path, f"document expands to more than {MAX_NODES} values (aliases?)")
            return None
        if isinstance(node, ScalarNode):
            try:
                return self.loader.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as e:
                self.problem(node, path, e.problem or "cannot read this value")
                return None
        if id(node) in self.active:
            self.problem(node, path, "an alias refers to the node that contains it")
            return None
        self.active.add(id(node))
        try:
            if isinstance(node, SequenceNode) and node.tag == _SEQ_TAG:
                return self.build_list(node, path)
            if isinstance(node, MappingNode) and node.tag == _MAP_TAG:
                return self.build_dict(node, path)
            self.problem(node, path, f"unsupported YAML tag '{node.tag}'")
            return None
        finally:
            self.active.discard(id(node))

    def build_list(self, node: SequenceNode, path: KeyPath) -> list[object]:
        out: list[object] = []
        for i, item in enumerate(node.value):
            self.doc.lines[(*path, i)] = item.start_mark.line + 1
            out.append(self.build(item, (*path, i)))
        return out

    def build_dict(self, node: MappingNode, path: KeyPath) -> dict[str, object]:
        out: dict[str, object] = {}
        first_line: dict[str, int] = {}
        merges: list[Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                merges.append(value_node)
                continue
            key = self.build(key_node, path)
            line = key_node.start_mark.line + 1
            if not isinstance(key, str):
                self.problem(key_node, path, f"keys must be strings, got {describe(key)} (quote it)")
                continue
            if key in first_line:
                self.problem(
                    key_node, (*path, key), f"duplicate key '{key}' (first on line {first_line[key]})"
                )
            first_line[key] = first_line.get(key, line)
            self.doc.lines[(*path, key)] = line
            out[key] = self.build(value_node, (*path, key))
        for merge in merges:  # "<<: *defaults": explicit keys win, earlier merges win
            sources = merge.value if isinstance(merge, SequenceNode) else [merge]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.problem(merge, path, "'<<' must merge a mapping or a list of mappings")
                    continue
                own_lines, self.doc.lines = self.doc.lines, {}
                try:
                    merged = self.build(source, path)
                finally:
                    source_lines, self.doc.lines = self.doc.lines, own_lines
                if not isinstance(merged, dict):
                    continue
                for key, value in merged.items():
                    if key not in out:
                        out[key] = value
                        prefix = (*path, key)
                        for sub, line in source_lines.items():
                            if sub[: len(prefix)] == prefix:
                                self.doc.lines[sub] = line
        return out
