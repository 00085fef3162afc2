"""DIRAC JDL (ClassAd syntax) as users write it, and parametric expansion.

Syntax accepted (what DIRAC users write, plus what ClassAds allow around it)::

    [
      Executable = "run.sh";            // comments: //, # and /* ... */
      Arguments = "-n 100 -seed %s";
      InputSandbox = {"run.sh", "LFN:/juno/user/a/alice/cfg.py"};
      Parameters = 10; ParameterStart = 1; ParameterStep = 2; ParameterFactor = 1;
      CPUTime = 3600;  Tags = {"juno"};  WholeNode = false;
    ]

* the outer brackets are optional; `;` separates attributes (optional after the last one);
* values: strings in double quotes with backslash escapes (\\" \\\\ \\n \\t \\r \\uXXXX), integers, reals
  (`1.5`, `2e3`, negative), `true`/`false`, lists `{ v, v, ... }` (a trailing comma is accepted), nested
  ClassAds `[ a = 1; ]`, and bare words (`JobType = User;`) read as strings;
* attribute names are case-insensitive (ClassAd rule); the model maps them to DIRAC's spelling.

Errors are `JDLSyntaxError` with the line and column (1-based) of the offending token.

Parametric expansion follows DIRAC's `ParametricJob.py`: `Parameters` is a list or a count N whose values are
`ParameterStart`, then `previous * ParameterFactor + ParameterStep`; named sequences `Parameters.<name>` (with
their own Start/Step/Factor) must have the same length. In every string of the description `%s` becomes the value
of the default sequence, `%n` the index (zero-padded to the width of the largest index), `%j` the job ID,
`%(name)s` the value of sequence `name`, and `%%` a literal `%`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from junodcs.core.errors import InvalidInput


class JDLSyntaxError(InvalidInput):
    code = "jdl-syntax"

    def __init__(self, message: str, line: int, column: int) -> None:
        super().__init__(f"JDL line {line}, column {column}: {message}", line=line, column=column)
        self.line = line
        self.column = column


class ParametricError(InvalidInput):
    code = "bad-parameters"


# -- tokenizer ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # string number word punct eof
    value: Any
    line: int
    column: int


_PUNCT = set("[]{}=;,")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-:/]*")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "/": "/", "'": "'"}


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n, line, line_start = 0, len(text), 1, 0

    def col(pos: int) -> int:
        return pos - line_start + 1

    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            line_start = i + 1
            i += 1
        elif c in " \t\r\f\v":
            i += 1
        elif c == "#" or text.startswith("//", i):
            while i < n and text[i] != "\n":
                i += 1
        elif text.startswith("/*", i):
            start_line, start_col = line, col(i)
            end = text.find("*/", i + 2)
            if end < 0:
                raise JDLSyntaxError("comment opened with /* is never closed", start_line, start_col)
            for k in range(i, end):
                if text[k] == "\n":
                    line += 1
                    line_start = k + 1
            i = end + 2
        elif c == '"':
            start_line, start_col = line, col(i)
            i += 1
            out: list[str] = []
            while True:
                if i >= n or text[i] == "\n":
                    raise JDLSyntaxError("string is not closed (missing \")", start_line, start_col)
                ch = text[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\":
                    if i + 1 >= n:
                        raise JDLSyntaxError("backslash at the end of the input", line, col(i))
                    esc = text[i + 1]
                    if esc in _ESCAPES:
                        out.append(_ESCAPES[esc])
                        i += 2
                    elif esc == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[i + 2 : i + 6]):
                        out.append(chr(int(text[i + 2 : i + 6], 16)))
                        i += 6
                    else:
                        raise JDLSyntaxError(f"unknown escape \\{esc} in a string", line, col(i))
                    continue
                out.append(ch)
                i += 1
            tokens.append(Token("string", "".join(out), start_line, start_col))
        elif c in _PUNCT:
            tokens.append(Token("punct", c, line, col(i)))
            i += 1
        elif c.isdigit() or (c in "+-." and i + 1 < n and (text[i + 1].isdigit() or text[i + 1] == ".")):
            match = _NUMBER_RE.match(text, i)
            if not match:
                raise JDLSyntaxError(f"cannot read a number at {text[i:i + 10]!r}", line, col(i))
            literal = match.group(0)
            value: int | float = float(literal) if any(ch in literal for ch in ".eE") else int(literal)
            tokens.append(Token("number", value, line, col(i)))
            i = match.end()
        elif c.isalpha() or c == "_":
            match = _WORD_RE.match(text, i)
            assert match
            tokens.append(Token("word", match.group(0), line, col(i)))
            i = match.end()
        else:
            raise JDLSyntaxError(f"unexpected character {c!r}", line, col(i))
    tokens.append(Token("eof", None, line, col(i)))
    return tokens


# -- parser ------------------------------------------------------------------------------------------------


@dataclass
class Attribute:
    name: str
    value: Any
    line: int


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.pos = 0

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def fail(self, message: str, token: Token | None = None) -> JDLSyntaxError:
        token = token or self.tok
        return JDLSyntaxError(message, token.line, token.column)

    def is_punct(self, char: str) -> bool:
        return self.tok.kind == "punct" and self.tok.value == char

    def describe(self, token: Token) -> str:
        if token.kind == "eof":
            return "the end of the JDL"
        if token.kind == "string":
            return f'string "{token.value}"'
        return repr(str(token.value))

    def document(self) -> list[Attribute]:
        if self.is_punct("["):
            self.advance()
            attributes = self.attributes(closing="]")
            if not self.is_punct("]"):
                raise self.fail(f"expected ']' to close the JDL, found {self.describe(self.tok)}")
            self.advance()
            if self.tok.kind != "eof":
                raise self.fail(f"unexpected {self.describe(self.tok)} after the closing ']'")
            return attributes
        attributes = self.attributes(closing=None)
        if self.tok.kind != "eof":
            raise self.fail(f"unexpected {self.describe(self.tok)}")
        return attributes

    def attributes(self, closing: str | None) -> list[Attribute]:
        found: list[Attribute] = []
        seen: dict[str, int] = {}
        while True:
            if self.tok.kind == "eof" or (closing and self.is_punct(closing)):
                return found
            if self.is_punct(";"):  # empty statement
                self.advance()
                continue
            name_tok = self.advance()
            if name_tok.kind != "word":
                raise self.fail(f"expected an attribute name, found {self.describe(name_tok)}", name_tok)
            if not self.is_punct("="):
                raise self.fail(f"expected '=' after attribute {name_tok.value}, found {self.describe(self.tok)}")
            self.advance()
            value = self.value(name_tok.value)
            key = name_tok.value.lower()
            if key in seen:
                raise self.fail(f"attribute {name_tok.value} is already set on line {seen[key]}", name_tok)
            seen[key] = name_tok.line
            found.append(Attribute(name_tok.value, value, name_tok.line))
            if self.is_punct(";"):
                self.advance()
                continue
            if self.tok.kind == "eof" or (closing and self.is_punct(closing)):
                return found
            raise self.fail(f"expected ';' after the value of {name_tok.value}, found {self.describe(self.tok)}")

    def value(self, name: str) -> Any:
        token = self.tok
        if token.kind in ("string", "number"):
            self.advance()
            return token.value
        if token.kind == "word":
            self.advance()
            lowered = token.value.lower()
            if lowered in ("true", "false"):
                return lowered == "true"
            return token.value
        if self.is_punct("{"):
            self.advance()
            items: list[Any] = []
            while True:
                if self.is_punct("}"):
                    self.advance()
                    return items
                if self.tok.kind == "eof":
                    raise self.fail(f"list of {name} opened on line {token.line} is never closed with '}}'")
                items.append(self.value(name))
                if self.is_punct(","):
                    self.advance()
                elif not self.is_punct("}"):
                    raise self.fail(f"expected ',' or '}}' in the list of {name}, found {self.describe(self.tok)}")
        if self.is_punct("["):
            self.advance()
            nested = self.attributes(closing="]")
            if not self.is_punct("]"):
                raise self.fail(f"expected ']' to close the ClassAd of {name}")
            self.advance()
            return {a.name: a.value for a in nested}
        raise self.fail(f"expected a value for {name}, found {self.describe(token)}")


def parse_attributes(text: str) -> list[Attribute]:
    """The attributes of a JDL in order, with the line each starts on."""
    if not isinstance(text, str):
        raise InvalidInput("a JDL is text")
    return _Parser(text).document()


def parse(text: str) -> tuple[dict[str, Any], dict[str, int]]:
    """JDL text -> (attribute name -> value, attribute name -> line)."""
    attributes = parse_attributes(text)
    return {a.name: a.value for a in attributes}, {a.name: a.line for a in attributes}


# -- writing -----------------------------------------------------------------------------------------------


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "{" + ", ".join(_format(v) for v in value) + "}"
    if isinstance(value, dict):
        return "[ " + " ".join(f"{k} = {_format(v)};" for k, v in value.items()) + " ]"
    return _quote(str(value))


def dumps(attributes: dict[str, Any]) -> str:
    """A JDL text for `attributes` (None values left out)."""
    lines = [f"    {name} = {_format(value)};" for name, value in attributes.items() if value is not None]
    return "[\n" + "\n".join(lines) + "\n]\n"


# -- parametric expansion ----------------------------------------------------------------------------------

MAX_PARAMETER_MAGNITUDE = 1e15
_PLACEHOLDER_RE = re.compile(r"%(?:\(([A-Za-z_][A-Za-z0-9_]*)\)s|([snj%]))")


def generate_sequence(name: str, spec: Any, start: Any, step: Any, factor: Any, limit: int) -> list[Any]:
    """The values of one sequence: a list as given, or N values start, prev*factor + step."""
    label = "Parameters" if name == "" else f"Parameters.{name}"
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise ParametricError(f"{label} is an empty list: give values or a count")
        if len(spec) > limit:
            raise ParametricError(f"{label} has {len(spec)} values: at most {limit} jobs per submission",
                                  code="too-many-jobs")
        for value in spec:
            if isinstance(value, (list, dict)):
                raise ParametricError(f"{label}: values must be strings or numbers, not {type(value).__name__}")
        return list(spec)
    if isinstance(spec, bool) or not isinstance(spec, (int, float)) or (isinstance(spec, float) and not spec.is_integer()):
        raise ParametricError(f"{label} must be a list of values or a whole number of jobs, not {spec!r}")
    count = int(spec)
    if count < 1:
        raise ParametricError(f"{label} = {count}: the number of jobs must be at least 1")
    if count > limit:
        raise ParametricError(f"{label} = {count}: at most {limit} jobs per submission", code="too-many-jobs")
    values: list[Any] = []
    numbers = {"ParameterStart": start, "ParameterStep": step, "ParameterFactor": factor}
    for key, number in numbers.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            suffix = f".{name}" if name else ""
            raise ParametricError(f"{key}{suffix} must be a number, not {number!r}")
    current: int | float = start
    for index in range(count):
        if abs(current) > MAX_PARAMETER_MAGNITUDE:
            raise ParametricError(
                f"{label}: value {index} ({current:g}) is beyond ±{MAX_PARAMETER_MAGNITUDE:g}; "
                "check ParameterFactor and ParameterStep")
        values.append(current)
        current = current * factor + step
    if all(isinstance(v, float) and v.is_integer() for v in values):
        values = [int(v) for v in values]
    return values


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(int(value)) if value.is_integer() else repr(value)
    return str(value)


def substitute(text: str, index: int, width: int, job_id: int | None, default: Any,
               named: dict[str, Any]) -> str:
    if "%" not in text:
        return text

    def repl(match: re.Match[str]) -> str:
        name, letter = match.group(1), match.group(2)
        if name is not None:
            if name not in named:
                raise ParametricError(f"placeholder %({name})s names no sequence Parameters.{name}")
            return format_value(named[name])
        if letter == "%":
            return "%"
        if letter == "n":
            return str(index).zfill(width)
        if letter == "j":
            return "" if job_id is None else str(job_id)
        return "" if default is None else format_value(default)

    return _PLACEHOLDER_RE.sub(repl, text)


def has_placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_PLACEHOLDER_RE.search(value))
    if isinstance(value, (list, tuple)):
        return any(has_placeholder(v) for v in value)
    if isinstance(value, dict):
        return any(has_placeholder(v) for v in value.values())
    return False


def substitute_value(value: Any, index: int, width: int, job_id: int | None, default: Any,
                     named: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return substitute(value, index, width, job_id, default, named)
    if isinstance(value, list):
        return [substitute_value(v, index, width, job_id, default, named) for v in value]
    if isinstance(value, dict):
        return {k: substitute_value(v, index, width, job_id, default, named) for k, v in value.items()}
    return value
