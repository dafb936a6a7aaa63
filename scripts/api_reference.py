"""Write the API reference (``docs/api.md``) from the proto's comments.

The proto is compiled with ``grpc_tools.protoc`` into a ``FileDescriptorSet`` that keeps its
source information (the comments); the reference lists the service and each RPC, each message
with a table of its fields, and each enum with its values, in the order the proto declares
them. The output depends on the proto alone, so it is reproducible byte for byte.

Usage::

    python scripts/api_reference.py > docs/api.md     # regenerate
    python scripts/api_reference.py --check docs/api.md  # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.api import annotations_pb2
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PROTO = PROTO_ROOT / "quota_authority" / "v1" / "quota_authority.proto"
REGENERATE = "python scripts/api_reference.py > docs/api.md"

# Field numbers of the descriptor messages, as SourceCodeInfo.Location paths use them.
_FILE_MESSAGE = descriptor_pb2.FileDescriptorProto.MESSAGE_TYPE_FIELD_NUMBER
_FILE_ENUM = descriptor_pb2.FileDescriptorProto.ENUM_TYPE_FIELD_NUMBER
_FILE_SERVICE = descriptor_pb2.FileDescriptorProto.SERVICE_FIELD_NUMBER
_MESSAGE_FIELD = descriptor_pb2.DescriptorProto.FIELD_FIELD_NUMBER
_MESSAGE_NESTED = descriptor_pb2.DescriptorProto.NESTED_TYPE_FIELD_NUMBER
_MESSAGE_ENUM = descriptor_pb2.DescriptorProto.ENUM_TYPE_FIELD_NUMBER
_MESSAGE_ONEOF = descriptor_pb2.DescriptorProto.ONEOF_DECL_FIELD_NUMBER
_ENUM_VALUE = descriptor_pb2.EnumDescriptorProto.VALUE_FIELD_NUMBER
_SERVICE_METHOD = descriptor_pb2.ServiceDescriptorProto.METHOD_FIELD_NUMBER

_FieldProto = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    _FieldProto.TYPE_DOUBLE: "double",
    _FieldProto.TYPE_FLOAT: "float",
    _FieldProto.TYPE_INT64: "int64",
    _FieldProto.TYPE_UINT64: "uint64",
    _FieldProto.TYPE_INT32: "int32",
    _FieldProto.TYPE_FIXED64: "fixed64",
    _FieldProto.TYPE_FIXED32: "fixed32",
    _FieldProto.TYPE_BOOL: "bool",
    _FieldProto.TYPE_STRING: "string",
    _FieldProto.TYPE_BYTES: "bytes",
    _FieldProto.TYPE_UINT32: "uint32",
    _FieldProto.TYPE_SFIXED32: "sfixed32",
    _FieldProto.TYPE_SFIXED64: "sfixed64",
    _FieldProto.TYPE_SINT32: "sint32",
    _FieldProto.TYPE_SINT64: "sint64",
}
_WELL_KNOWN = "https://protobuf.dev/reference/protobuf/google.protobuf/#"


class ProtocError(RuntimeError):
    """protoc refused the proto; the message is its output."""


def descriptor_set(proto: Path = PROTO, proto_root: Path = PROTO_ROOT) -> bytes:
    """``proto`` compiled by ``grpc_tools.protoc`` into a serialized ``FileDescriptorSet``
    with source information and every import."""
    with tempfile.TemporaryDirectory(prefix="api-reference-") as tmp:
        out = Path(tmp) / "descriptor_set.pb"
        command = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            "--include_source_info",
            "--include_imports",
            f"--descriptor_set_out={out}",
            str(proto),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ProtocError(f"protoc failed on {proto}:\n{done.stderr.strip()}")
        return out.read_bytes()


def _comment(location: descriptor_pb2.SourceCodeInfo.Location | None) -> str:
    """The element's comment, leading or else trailing, as Markdown lines (paragraphs kept)."""
    if location is None:
        return ""
    raw = location.leading_comments or location.trailing_comments
    lines = [line[1:] if line.startswith(" ") else line for line in raw.split("\n")]
    return "\n".join(line.rstrip() for line in lines).strip()


def _http_rule(options: descriptor_pb2.MethodOptions) -> list[str]:
    """The method's ``google.api.http`` option as a line of the reference (docs/http.md
    says how it is served), or nothing when it has none."""
    if not options.HasExtension(annotations_pb2.http):
        return []
    rule = options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    if verb is None or verb == "custom":
        return []
    body = f", JSON body `{rule.body}`" if rule.body else ", fields in the query string"
    line = f"HTTP/JSON: `{verb.upper()} {getattr(rule, verb)}`{body} ([docs/http.md](http.md))."
    return [line, ""]


def _one_line(text: str) -> str:
    """``text`` fit for a table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _first_sentence(text: str) -> str:
    flat = " ".join(text.split())
    match = re.match(r"(.+?\.)(\s|$)", flat)
    return match.group(1) if match else flat


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@dataclass
class _Anchors:
    """Heading anchors handed out in document order, numbered on collision as GitHub does."""

    used: dict[str, int] = field(default_factory=dict)

    def take(self, heading: str) -> str:
        base = _slug(heading)
        count = self.used.get(base, 0)
        self.used[base] = count + 1
        return base if count == 0 else f"{base}-{count}"


@dataclass
class _Message:
    full_name: str  # without the leading dot, e.g. quota_authority.v1.QuotaStatus
    title: str  # relative to the package, e.g. Outer.Inner
    proto: descriptor_pb2.DescriptorProto
    path: tuple[int, ...]
    anchor: str = ""


@dataclass
class _Enum:
    full_name: str
    title: str
    proto: descriptor_pb2.EnumDescriptorProto
    path: tuple[int, ...]
    anchor: str = ""


class _Reference:
    """One proto file's reference, with the other files of the set known for type names."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet, target: str) -> None:
        found = [f for f in files.file if f.name == target]
        if not found:
            raise ValueError(f"{target} is not in the descriptor set")
        self.file = found[0]
        self.package = self.file.package
        self.locations = {
            tuple(location.path): location for location in self.file.source_code_info.location
        }
        self.messages: list[_Message] = []
        self.enums: list[_Enum] = []
        prefix = f"{self.package}." if self.package else ""
        for i, message in enumerate(self.file.message_type):
            self._add_message(message, prefix, "", (_FILE_MESSAGE, i))
        for i, enum in enumerate(self.file.enum_type):
            self.enums.append(_Enum(prefix + enum.name, enum.name, enum, (_FILE_ENUM, i)))
        self.map_entries = {
            f".{m.full_name}": m.proto for m in self.messages if m.proto.options.map_entry
        }
        self.messages = [m for m in self.messages if not m.proto.options.map_entry]
        # Every message and enum of the whole set, for types defined in imported files.
        self.external: set[str] = set()
        for other in files.file:
            if other is self.file:
                continue
            package = f".{other.package}." if other.package else "."
            self.external.update(package + m.name for m in other.message_type)
            self.external.update(package + e.name for e in other.enum_type)
        anchors = _Anchors()
        for heading in ("API reference", "Services", "Messages", "Enums"):
            anchors.take(heading)
        self.method_anchors: dict[tuple[int, int], str] = {}
        for i, service in enumerate(self.file.service):
            anchors.take(service.name)
            for j, method in enumerate(service.method):
                self.method_anchors[(i, j)] = anchors.take(method.name)
        for documented in self.messages:
            documented.anchor = anchors.take(documented.title)
        for listed in self.enums:
            listed.anchor = anchors.take(listed.title)
        self.links: dict[str, _Message | _Enum] = {f".{m.full_name}": m for m in self.messages}
        self.links.update({f".{e.full_name}": e for e in self.enums})

    def _add_message(
        self,
        message: descriptor_pb2.DescriptorProto,
        prefix: str,
        outer: str,
        path: tuple[int, ...],
    ) -> None:
        title = f"{outer}{message.name}"
        self.messages.append(_Message(prefix + title, title, message, path))
        for i, nested in enumerate(message.nested_type):
            self._add_message(nested, prefix, f"{title}.", (*path, _MESSAGE_NESTED, i))
        for i, enum in enumerate(message.enum_type):
            name = f"{title}.{enum.name}"
            self.enums.append(_Enum(prefix + name, name, enum, (*path, _MESSAGE_ENUM, i)))

    def comment(self, path: Iterable[int]) -> str:
        return _comment(self.locations.get(tuple(path)))

    def relative(self, type_name: str) -> str:
        """A fully qualified type name (``.pkg.Outer.Inner``) as the package sees it."""
        name = type_name.lstrip(".")
        prefix = f"{self.package}."
        return name[len(prefix) :] if self.package and name.startswith(prefix) else name

    def type_link(self, type_name: str) -> str:
        """A message or enum type, linked to its section (or to the protobuf reference)."""
        target = self.links.get(type_name)
        if target is not None:
            return f"[`{target.title}`](#{target.anchor})"
        name = type_name.lstrip(".")
        if type_name.startswith(".google.protobuf."):
            short = name.rsplit(".", 1)[1]
            return f"[`{name}`]({_WELL_KNOWN}{short.lower()})"
        return f"`{name}`"

    def _bare_type(self, f: descriptor_pb2.FieldDescriptorProto) -> str:
        if f.type in (_FieldProto.TYPE_MESSAGE, _FieldProto.TYPE_GROUP, _FieldProto.TYPE_ENUM):
            kind = "enum " if f.type == _FieldProto.TYPE_ENUM else ""
            return kind + self.type_link(f.type_name)
        return f"`{_SCALARS[f.type]}`"

    def field_type(self, f: descriptor_pb2.FieldDescriptorProto, oneof: str | None) -> str:
        entry = self.map_entries.get(f.type_name)
        if entry is not None and f.label == _FieldProto.LABEL_REPEATED:
            key, value = entry.field[0], entry.field[1]
            return f"map<{self._bare_type(key)}, {self._bare_type(value)}>"
        bare = self._bare_type(f)
        if f.label == _FieldProto.LABEL_REPEATED:
            return f"repeated {bare}"
        if f.proto3_optional or f.label == _FieldProto.LABEL_REQUIRED:
            return f"{'optional' if f.proto3_optional else 'required'} {bare}"
        if oneof is not None:
            return f"{bare} (oneof `{oneof}`)"
        if f.label == _FieldProto.LABEL_OPTIONAL and self.file.syntax == "proto2":
            return f"optional {bare}"
        return bare

    # --- rendering ---------------------------------------------------------------------

    def render(self, source: str) -> str:
        out: list[str] = [
            "# API reference",
            "",
            f"Generated from the comments of {source} by "
            "`scripts/api_reference.py`; edit the proto, not this file, and regenerate it "
            f"with `{REGENERATE}`.",
            "",
            f"Package `{self.package}`." if self.package else "The proto declares no package.",
            "",
        ]
        if self.file.service:
            out += ["## Services", ""]
            for i, service in enumerate(self.file.service):
                out += self._service(service, i)
        if self.messages:
            out += ["## Messages", ""]
            for message in self.messages:
                out += self._message(message)
        if self.enums:
            out += ["## Enums", ""]
            for enum_ in self.enums:
                out += self._enum(enum_)
        while out and out[-1] == "":
            out.pop()
        return "\n".join(out) + "\n"

    def _paragraph(self, text: str) -> list[str]:
        return [text, ""] if text else []

    def _service(self, service: descriptor_pb2.ServiceDescriptorProto, index: int) -> list[str]:
        path = (_FILE_SERVICE, index)
        full = f"{self.package}.{service.name}" if self.package else service.name
        out = [f"### {service.name}", "", f"`{full}`", ""]
        out += self._paragraph(self.comment(path))
        rows = ["| RPC | request | response | summary |", "| --- | --- | --- | --- |"]
        sections: list[str] = []
        for j, method in enumerate(service.method):
            comment = self.comment((*path, _SERVICE_METHOD, j))
            request = self.type_link(method.input_type)
            response = self.type_link(method.output_type)
            if method.client_streaming:
                request = f"stream {request}"
            if method.server_streaming:
                response = f"stream {response}"
            rows.append(
                f"| [{method.name}](#{self.method_anchors[(index, j)]}) | {request} | {response} | "
                f"{_one_line(_first_sentence(comment))} |"
            )
            signature = (
                f"rpc {method.name}({'stream ' if method.client_streaming else ''}"
                f"{self.relative(method.input_type)}) returns "
                f"({'stream ' if method.server_streaming else ''}"
                f"{self.relative(method.output_type)})"
            )
            sections += [f"#### {method.name}", "", f"`{signature}`", ""]
            sections += _http_rule(method.options)
            sections += self._paragraph(comment)
            sections += [f"Request: {request}. Response: {response}.", ""]
            if method.options.deprecated:
                sections += ["Deprecated.", ""]
        return [*out, *rows, "", *sections]

    def _message(self, message: _Message) -> list[str]:
        out = [f"### {message.title}", "", f"`{message.full_name}`", ""]
        out += self._paragraph(self.comment(message.path))
        proto = message.proto
        real_oneofs = {
            index: decl.name
            for index, decl in enumerate(proto.oneof_decl)
            if not any(f.proto3_optional and f.oneof_index == index for f in proto.field)
        }
        if not proto.field:
            return [*out, "No fields.", ""]
        out += ["| field | number | type | description |", "| --- | --- | --- | --- |"]
        for i, f in enumerate(proto.field):
            oneof = real_oneofs.get(f.oneof_index) if f.HasField("oneof_index") else None
            description = self.comment((*message.path, _MESSAGE_FIELD, i))
            if f.options.deprecated:
                description = f"Deprecated. {description}".strip()
            out.append(
                f"| `{f.name}` | {f.number} | {self.field_type(f, oneof)} | "
                f"{_one_line(description)} |"
            )
        out.append("")
        for index, name in sorted(real_oneofs.items()):
            members = ", ".join(
                f"`{f.name}`"
                for f in proto.field
                if f.HasField("oneof_index") and f.oneof_index == index
            )
            comment = self.comment((*message.path, _MESSAGE_ONEOF, index))
            line = f"Oneof `{name}`: at most one of {members} is set."
            out += [f"{line} {_one_line(comment)}".strip(), ""]
        return out

    def _enum(self, enum_: _Enum) -> list[str]:
        out = [f"### {enum_.title}", "", f"`{enum_.full_name}`", ""]
        out += self._paragraph(self.comment(enum_.path))
        out += ["| value | number | description |", "| --- | --- | --- |"]
        for i, value in enumerate(enum_.proto.value):
            description = self.comment((*enum_.path, _ENUM_VALUE, i))
            if value.options.deprecated:
                description = f"Deprecated. {description}".strip()
            out.append(f"| `{value.name}` | {value.number} | {_one_line(description)} |")
        return [*out, ""]


def render(proto: Path = PROTO, proto_root: Path = PROTO_ROOT) -> str:
    """The Markdown reference of ``proto`` (a file under ``proto_root``)."""
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set(proto, proto_root))
    target = proto.resolve().relative_to(proto_root.resolve()).as_posix()
    try:
        relative = proto.resolve().relative_to(ROOT).as_posix()
        source = f"[`{relative}`](../{relative})"  # docs/api.md links back to the proto
    except ValueError:
        source = f"`{proto.as_posix()}`"
    return _Reference(files, target).render(source)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check",
        metavar="FILE",
        type=Path,
        help="compare FILE with the reference instead of printing it; exit 1 if it differs",
    )
    parser.add_argument(
        "--proto", type=Path, default=PROTO, help="the proto file (default: %(default)s)"
    )
    parser.add_argument(
        "--proto-root",
        type=Path,
        default=PROTO_ROOT,
        help="the import root the proto lies under (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        reference = render(args.proto, args.proto_root)
    except ProtocError as e:
        print(e, file=sys.stderr)
        return 2
    if args.check is None:
        sys.stdout.buffer.write(reference.encode("utf-8"))
        sys.stdout.buffer.flush()
        return 0
    try:
        current = args.check.read_text(encoding="utf-8")
    except OSError as e:
        print(f"{args.check}: cannot read it: {e.strerror}", file=sys.stderr)
        return 1
    if current != reference:
        print(
            f"{args.check} is out of date with {args.proto.name}: regenerate it with "
            f"`{REGENERATE}`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
