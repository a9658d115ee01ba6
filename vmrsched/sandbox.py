"""jinja's sandbox with what one render may build bounded, for the admins' templates
(`templating`).

The sandbox keeps a template from reaching Python's internals, not from asking for all the
memory and time there is: `'x' * 10**9`, `9 ** 9 ** 9`, `s|center(10**9)` or twenty lines of
`{% set s = s ~ s %}` are each one step, which check-config's clock (read between lines) cannot
stop. `Sandbox` sizes every operation that can make much from little before it runs, through
the sandbox's documented hooks (`intercepted_binops` and `call_binop`, `call`,
`wrap_str_format`) and the filters, tests, finalize, concat and code generator an environment
is made with:

- one render builds at most MAX_BUILT characters or list items, summed over its repeats
  (`*`), joins (`+`, `~`, `join`, `sum`), padding and formatting (`center`, `indent`,
  `wordwrap`, `replace`, `%`, `format`, a string's methods of the same kinds), a list's growth
  (`append`, `extend`, ...), and every container turned into text (a list holding one long
  string many times is as long as all of them);
- integers made by `*` and `**` stop at MAX_INT_BITS bits (a power estimated from its
  exponent before it is computed), and two larger ones are not divided (`//`, `%`);
- a render prints at most MAX_OUTPUT characters.

Past a limit the render raises TemplateLimitError. A template that uses none of these renders
as jinja's would, at its speed but for some 50 ns a printed value (`finalize` counts them):
`first`, `default`, `length` and the other filters that never lengthen what they are given
are left as they are.

Not bounded here: the time a loop takes (check-config stops a render after DRY_RUN_SECONDS;
a loop over the subject runs longer on a longer subject) and what a template's own text holds.
"""

from __future__ import annotations

import math
import operator
import re
import types
from collections.abc import Callable, Collection, Iterable, Mapping, Sized
from itertools import chain
from typing import Any, cast

from jinja2 import nodes
from jinja2 import tests as jinja_tests
from jinja2.compiler import CodeGenerator, Frame, optimizeconst
from jinja2.exceptions import SecurityError
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context
from jinja2.sandbox import (
    SandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
    modifies_known_mutable,
)
from jinja2.utils import Namespace, pass_context
from markupsafe import Markup

# What one render of an admin's template may build. The service renders them for every booking
# and every add-in request, on values from meeting requests (a subject may be a thousand
# characters where check-config's sample has 31), so the limits hold at run time as well.
MAX_BUILT = 1_000_000  # characters or list items, summed over one render (`_charge`)
MAX_OUTPUT = 256 * 1024  # characters one render prints; a joining text is a few hundred
MAX_INT_BITS = 4096  # integers `*`, `**`, `//` and `%` make or divide (about 1,233 digits)


class TemplateLimitError(SecurityError):
    """A render would go over MAX_BUILT, MAX_OUTPUT or MAX_INT_BITS; refused before the
    operation ran. `template`: which template, where the renderer knows (for the admin)."""

    template = ""


class _Context(Context):
    """A render's context, with what the render has built so far."""

    built = 0


def _charge(context: Context | None, size: int, what: str) -> None:
    """Count `size` characters or items against the render's MAX_BUILT, or refuse them."""
    built = context.built if isinstance(context, _Context) else 0
    if built + size > MAX_BUILT:
        already = f", and this one has built {built:,} already" if built else ""
        raise TemplateLimitError(
            f"{what} would build {size:,} characters or items; one render may build "
            f"{MAX_BUILT:,}{already}"
        )
    if isinstance(context, _Context):
        context.built = built + size


# what prints as its items: a list holding one long string many times is as long as all of them
_CONTAINERS: tuple[type, ...] = (list, tuple, dict, set, frozenset, Namespace)
_CONTAINERS += (type({}.keys()), type({}.values()), type({}.items()))
_SEQUENCES = (str, bytes, list, tuple)


def _size(value: object, limit: int = MAX_BUILT) -> int:
    """About how many characters `value` makes as text: a string's length, a number's digits,
    a container's items and theirs (a list holding one long string a thousand times is a
    thousand times as long), counted no further than just past `limit`."""
    if isinstance(value, str | bytes):
        return len(value)
    total = 0
    stack: list[object] = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str | bytes):
            total += len(item)
        elif isinstance(item, Namespace):  # prints as its attributes' dict
            stack.append(getattr(item, "_Namespace__attrs", {}))
        elif isinstance(item, dict):
            total += len(item) + 2
            stack.extend(chain(item.keys(), item.values()))
        elif isinstance(item, _CONTAINERS):
            items = cast(Collection[object], item)
            total += len(items) + 2
            stack.extend(items)
        else:
            total += item.bit_length() // 3 + 1 if isinstance(item, int) else 1
    return total


def _number(digits: str) -> int:
    """A width or precision written in a format; absurdly long ones as too many."""
    return int(digits) if len(digits) < 10 else 10**10


def _too_big(operator: str, bits: float) -> TemplateLimitError:
    return TemplateLimitError(
        f"`{operator}` would make a number of about {bits:,.0f} bits; template arithmetic "
        f"stops at {MAX_INT_BITS:,}"
    )


def _times(context: Context, left: Any, right: Any) -> Any:
    """`*`: a product of at most MAX_INT_BITS bits; a repeated string or list counted."""
    if isinstance(left, int) and isinstance(right, int):
        bits = left.bit_length() + right.bit_length()
        if bits - 1 > MAX_INT_BITS:  # a product has at least this many
            raise _too_big("*", bits)
    elif isinstance(left, _SEQUENCES) and isinstance(right, int):
        _charge(context, len(left) * max(right, 0), "`*`")
    elif isinstance(right, _SEQUENCES) and isinstance(left, int):
        _charge(context, len(right) * max(left, 0), "`*`")
    return left * right


def _power(context: Context, left: Any, right: Any) -> Any:
    """`**`: the result's bits estimated (exponent times log2 of the base) before it is
    computed."""
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        bits = min(right, 10**300) * math.log2(abs(left))
        if bits >= MAX_INT_BITS:  # the result has floor(bits) + 1 bits
            raise _too_big("**", bits)
    return left**right


def _plus(context: Context, left: Any, right: Any) -> Any:
    if isinstance(left, _SEQUENCES) and isinstance(right, _SEQUENCES):
        _charge(context, len(left) + len(right), "`+`")
    return left + right


# a printf conversion's width and precision: %(name)-08.3f, %*s, %.*f
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _printf_size(form: str | bytes, values: Any) -> int:
    """What `form % values` makes at most: the form, the values as text, every width and
    precision (one given as `*` is taken from the values)."""
    size = len(form) + _size(values)
    text = form if isinstance(form, str) else form.decode("latin-1")
    star = False
    for numbers in _PRINTF.findall(text):
        for number in numbers:
            if number == "*":
                star = True
            elif number:
                size += _number(number)
    if star:
        given = values if isinstance(values, tuple) else (values,)
        size += sum(min(abs(v), 10**10) for v in given if isinstance(v, int))
    return size


def _dividing(symbol: str, apply: Callable[[Any, Any], Any]) -> Callable[[Context, Any, Any], Any]:
    """`//` and `%`: a huge number divided by a small one is quick, by another huge one not;
    a string's `%` formatting sized by `_printf_size`."""

    def divide(context: Context, left: Any, right: Any) -> Any:
        if symbol == "%" and isinstance(left, str | bytes):
            _charge(context, _printf_size(left, right), "`%`")
        elif (
            isinstance(left, int)
            and isinstance(right, int)
            and min(left.bit_length(), right.bit_length()) > MAX_INT_BITS
        ):
            raise TemplateLimitError(
                f"`{symbol}` of two numbers of over {MAX_INT_BITS:,} bits each: template "
                f"arithmetic stops at {MAX_INT_BITS:,}"
            )
        return apply(left, right)

    return divide


_BINOPS: dict[str, Callable[[Context, Any, Any], Any]] = {
    "*": _times,
    "**": _power,
    "+": _plus,
    "//": _dividing("//", operator.floordiv),
    "%": _dividing("%", operator.mod),
}


class _Sizing(SandboxedFormatter):
    """The sandbox's `str.format`, each field sized (its value as text, its width and
    precision) before it is formatted."""

    def __init__(self, env: SandboxedEnvironment, context: Context | None, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._context = context

    def format_field(self, value: Any, format_spec: str) -> Any:
        widths = sum(_number(n) for n in re.findall(r"\d+", format_spec))
        _charge(self._context, _size(value) + widths, "str.format")
        return super().format_field(value, format_spec)


class _EscapeSizing(_Sizing, SandboxedEscapeFormatter):
    """The same for a Markup string's `format`, which escapes what it inserts."""


class _StrFormat:
    """A string's `format` or `format_map`, as the sandbox hands it out
    (`Sandbox.wrap_str_format`); `Sandbox.call` runs it with the render's context."""

    def __init__(self, env: SandboxedEnvironment, form: str, mapping: bool) -> None:
        self.env = env
        self.form = form
        self.mapping = mapping

    def run(self, context: Context | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if self.mapping:
            if kwargs or len(args) != 1:
                raise TypeError("format_map() takes exactly one argument")
            kwargs = args[0]
            args = ()
        _charge(context, len(self.form), "str.format")
        if isinstance(self.form, Markup):
            formatter: _Sizing = _EscapeSizing(self.env, context, escape=self.form.escape)
        else:
            formatter = _Sizing(self.env, context)
        return type(self.form)(formatter.vformat(self.form, args, kwargs))

    def __call__(self, *args: Any, **kwargs: Any) -> str:
        return self.run(None, args, kwargs)


# A string method that can make a long string from a short one: what it makes at most, from
# the string and its arguments (which it may hand on changed: `join`'s
# items are listed once, to be sized and then joined).
_Sized = tuple[int, tuple[Any, ...]]


def _padded(s: str | bytes, args: tuple[Any, ...], kw: Mapping[str, Any]) -> _Sized:
    width = args[0] if args else 0
    return (max(len(s), width) if isinstance(width, int) else len(s)), args


def _expanded(s: str | bytes, args: tuple[Any, ...], kw: Mapping[str, Any]) -> _Sized:
    size = args[0] if args else kw.get("tabsize", 8)
    tabs = s.count("\t") if isinstance(s, str) else s.count(b"\t")
    return len(s) + tabs * (max(size, 0) if isinstance(size, int) else 0), args


def _count(s: str | bytes, part: object) -> int:
    """How often `part` is in `s` (an empty one, between every two characters); -1 if it is
    not of the same kind."""
    if isinstance(s, str):
        return (s.count(part) if part else len(s) + 1) if isinstance(part, str) else -1
    return (s.count(part) if part else len(s) + 1) if isinstance(part, bytes) else -1


def _replaced(s: str | bytes, args: tuple[Any, ...], kw: Mapping[str, Any]) -> _Sized:
    old, new = (*args, None, None)[:2]
    found = _count(s, old)
    if found < 0 or not isinstance(new, str | bytes):
        return len(s), args  # refused by the method itself
    if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
        found = min(found, args[2])
    return len(s) + found * len(new), args


def _joined(s: str | bytes, args: tuple[Any, ...], kw: Mapping[str, Any]) -> _Sized:
    if len(args) != 1:
        return len(s), args
    items = list(args[0])
    return sum(_size(i) for i in items) + len(s) * max(len(items) - 1, 0), (items,)


def _translated(s: str | bytes, args: tuple[Any, ...], kw: Mapping[str, Any]) -> _Sized:
    table = args[0] if args else None
    longest = 1
    if isinstance(s, str) and isinstance(table, Mapping):
        longest = max([1, *(len(v) for v in table.values() if isinstance(v, str))])
    return len(s) * longest, args


_STR_METHODS: dict[str, Callable[[str | bytes, tuple[Any, ...], Mapping[str, Any]], _Sized]] = {
    **dict.fromkeys(("center", "ljust", "rjust", "zfill"), _padded),
    **{"expandtabs": _expanded, "replace": _replaced, "join": _joined, "translate": _translated},
}


def _grown(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Sized:
    """A list, dict or set method that adds to it: the items it adds (an iterator listed
    first, to be counted)."""
    args = tuple(
        a if isinstance(a, Sized) or not isinstance(a, Iterable) else list(a) for a in args
    )
    added = sum(len(a) for a in args if isinstance(a, Sized))
    return 1 + added + sum(1 for k in kwargs if not k.startswith("_")), args


# What a filter makes at most, from its value and arguments, for those that pad, join, wrap or
# replace (given the context: `wordwrap` joins with the environment's newline); the value and
# arguments to hand on.
_Filtered = tuple[int, Any, tuple[Any, ...], dict[str, Any]]


def _arg(args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _centered(c: Context, value: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> _Filtered:
    width = _arg(args, kw, 0, "width")
    width = 80 if width is None else width
    return max(_size(value), width if isinstance(width, int) else 0), value, args, kw


def _indented(c: Context, value: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> _Filtered:
    width = _arg(args, kw, 0, "width")
    step = 4 if width is None else len(width) if isinstance(width, str) else width
    lines = value.count("\n") + 2 if isinstance(value, str) else 1
    return _size(value) + lines * (max(step, 0) if isinstance(step, int) else 0), value, args, kw


def _wrapped(c: Context, value: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> _Filtered:
    joint = _arg(args, kw, 2, "wrapstring")
    joint = c.environment.newline_sequence if joint is None else joint
    size = _size(value)
    return size + (size + 1) * _size(joint), value, args, kw  # at most a break a character


def _replacing(c: Context, value: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> _Filtered:
    old, new, count = _arg(args, kw, 0, "old"), _arg(args, kw, 1, "new"), _arg(args, kw, 2, "count")
    size = _size(value)
    found = size + 1
    if isinstance(value, str) and isinstance(old, str) and old:
        found = value.count(old)
    if isinstance(count, int) and count >= 0:
        found = min(found, count)
    return size + found * _size(new), value, args, kw


def _joining(c: Context, value: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> _Filtered:
    joint = _arg(args, kw, 0, "d")
    joint = "" if joint is None else joint
    attribute = _arg(args, kw, 1, "attribute")
    items = list(value)
    if attribute is not None:
        items = list(map(make_attrgetter(c.environment, attribute), items))
    size = sum(_size(i) for i in items) + _size(joint) * max(len(items) - 1, 0)
    return size, items, (joint,), {}


def _formatting(c: Context, value: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> _Filtered:
    values = kw or args
    size = _printf_size(value, values) if isinstance(value, str) else _size(value) + _size(values)
    return size, value, args, kw


def _batched(c: Context, value: Any, args: tuple[Any, ...], kw: dict[str, Any]) -> _Filtered:
    count, fill = _arg(args, kw, 0, "linecount"), _arg(args, kw, 1, "fill_with")
    return (count if fill is not None and isinstance(count, int) else 0), value, args, kw


_FILTER_SIZES: dict[str, Callable[[Context, Any, tuple[Any, ...], dict[str, Any]], _Filtered]] = {
    "center": _centered,
    "indent": _indented,
    "wordwrap": _wrapped,
    "replace": _replacing,
    "join": _joining,
    "format": _formatting,
    "batch": _batched,
}

# filters that neither turn a container into text nor make a string longer than their value
# (`first`, `default`, `length`, ...): left as they are, at no cost to the renders using them
_KEEPS_SIZE = (
    frozenset({"abs", "attr", "count", "d", "default", "dictsort", "filesizeformat", "first"})
    | frozenset({"float", "groupby", "int", "items", "last", "length", "list", "map", "max"})
    | frozenset({"min", "random", "reject", "rejectattr", "reverse", "round", "select"})
    | frozenset({"selectattr", "slice", "sort", "unique"})
)


# filters that turn their value into text about as long (`upper`, `e`, `truncate`, ...): a
# container they are given counted as the text it becomes, nothing more
_TEXT_OF = frozenset({"capitalize", "e", "escape", "lower", "safe", "string", "striptags"}) | (
    frozenset({"title", "trim", "truncate", "upper", "wordcount"})
)


def _counted(name: str, kind: str, func: Callable[..., Any], after: bool) -> Callable[..., Any]:
    """A filter or test with what it makes counted: sized before it runs where
    `_FILTER_SIZES` knows how; else a container it is given counted as the text it becomes,
    and, `after`, the text it returns (`tojson` doubles every backslash: a chain of them is
    stopped within a step of the limit)."""
    what = f"the {name} {kind}"
    sizing = _FILTER_SIZES.get(name) if kind == "filter" else None
    # jinja marks a filter that takes the context, eval context or environment first
    # (pass_context and the like); context.call hands it over, the others are called at once
    direct = getattr(func, "jinja_pass_arg", None) is None

    @pass_context
    def counted(context: Context, value: Any, *args: Any, **kwargs: Any) -> Any:
        if sizing is not None:
            size, value, args, kwargs = sizing(context, value, args, kwargs)
            _charge(context, size, what)
        elif type(value) is not str and isinstance(value, _CONTAINERS):
            _charge(context, _size(value), what)
        made = (
            func(value, *args, **kwargs) if direct else context.call(func, value, *args, **kwargs)
        )
        if after and sizing is None and isinstance(made, str):
            _charge(context, len(made), what)
        return made

    return counted


@pass_context
def _sum(context: Context, iterable: Any, attribute: Any = None, start: Any = 0) -> Any:
    """The `sum` filter, which adds lists up in one pass (Python's sum copies the total so far
    for every list: quadratic) and counts the items."""
    if attribute is not None:
        iterable = map(make_attrgetter(context.environment, attribute), iterable)
    if not isinstance(start, list | tuple):
        return sum(iterable, start)
    kind = list if isinstance(start, list) else tuple
    items = list(iterable)
    for item in items:
        if not isinstance(item, kind):
            raise TypeError(
                f'can only concatenate {kind.__name__} (not "{type(item).__name__}") to '
                f"{kind.__name__}"
            )
    _charge(context, len(start) + sum(len(i) for i in items), "the sum filter")
    return kind(chain(start, *items))


@pass_context
def finalize(context: _Context, value: Any) -> Any:
    """A `{{ }}` value as it is printed: None as nothing (the templates' rule), anything else
    as jinja prints it, its length counted against the render's MAX_BUILT (what a render
    prints is built too, and a macro's or a block's output is kept until it is joined)."""
    if type(value) is str:  # most values: `_charge` inline
        built = context.built + len(value)
        if built <= MAX_BUILT:
            context.built = built
            return value
    if value is None:
        return ""
    if isinstance(value, _CONTAINERS):
        size = _size(value, MAX_OUTPUT)
        if size > MAX_OUTPUT:
            raise TemplateLimitError(
                f"would print a {type(value).__name__} of more than {MAX_OUTPUT:,} "
                "characters, the most one render may print"
            )
    elif isinstance(value, str):
        size = len(value)
    else:
        return value  # a number, a flag: a few characters
    _charge(context, size, "printing")
    return value


def _concat(pieces: Iterable[str]) -> str:
    """A render's printed pieces joined (jinja's `concat` is "".join), refused past
    MAX_OUTPUT. A piece is the template's own text or a value `finalize` counted, so listed
    they are references to strings already made; a few dozen of them are joined before the
    length is looked at (the template's text, repeated that often at most)."""
    kept = list(pieces)
    if len(kept) <= 64 or sum(map(len, kept)) <= MAX_OUTPUT:
        printed = "".join(kept)
        if len(printed) <= MAX_OUTPUT:
            return printed
    raise TemplateLimitError(
        f"prints more than {MAX_OUTPUT:,} characters, the most one render may print"
    )


class _CodeGenerator(CodeGenerator):
    """Compiles `a ~ b` to `environment.concat_parts`, which sizes the parts first (jinja
    writes its own markup_join or str_join there, which no environment can reach)."""

    @optimizeconst
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        if frame.eval_ctx.volatile:
            join = "(markup_join if context.eval_ctx.volatile else str_join)"
        elif frame.eval_ctx.autoescape:
            join = "markup_join"
        else:
            join = "str_join"
        self.write(f"environment.concat_parts(context, {join}, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class Sandbox(SandboxedEnvironment):
    """jinja's sandbox, with what a render builds bounded (module docstring). Through the
    sandbox's own hooks: the operators in `intercepted_binops` (`call_binop`), the calls
    (`call`: a string's padding and joining methods, a list's growth), `str.format`
    (`wrap_str_format`), and the filters, tests, finalize and concat it is made with; `~`
    through its code generator. A template that uses none of these renders as jinja's would,
    at its speed but for `finalize` counting each value printed (some 50 ns)."""

    code_generator_class = _CodeGenerator
    context_class = _Context
    intercepted_binops = frozenset(_BINOPS)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        for name, func in list(self.filters.items()):
            if name not in _KEEPS_SIZE:
                self.filters[name] = _counted(name, "filter", func, name not in _TEXT_OF)
        self.filters["sum"] = _sum
        self.tests["lower"] = _counted("lower", "test", jinja_tests.test_lower, False)
        self.tests["upper"] = _counted("upper", "test", jinja_tests.test_upper, False)

    concat = staticmethod(_concat)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return _BINOPS[operator](context, left, right)

    def concat_parts(
        self, context: Context, join: Callable[[Iterable[Any]], str], parts: tuple[Any, ...]
    ) -> str:
        _charge(context, sum(_size(p) for p in parts), "`~`")
        return join(parts)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        if not isinstance(value, types.MethodType | types.BuiltinMethodType):
            return None
        if value.__name__ not in ("format", "format_map") or not isinstance(value.__self__, str):
            return None
        return _StrFormat(self, value.__self__, value.__name__ == "format_map")

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        if isinstance(obj, _StrFormat):
            kwargs.pop("_loop_vars", None)
            kwargs.pop("_block_vars", None)
            return obj.run(context, args, kwargs)
        owner = getattr(obj, "__self__", None)
        name = getattr(obj, "__name__", "")
        if isinstance(owner, str | bytes):
            what = f"{type(owner).__name__}.{name}"
            sizing = _STR_METHODS.get(name)
            if sizing is not None:
                size, args = sizing(owner, args, kwargs)
                _charge(context, size, what)
                return super().call(context, obj, *args, **kwargs)
            made = super().call(context, obj, *args, **kwargs)
            if isinstance(made, str | bytes):  # upper(), encode(): at most a few times as long
                _charge(context, len(made), what)
            return made
        if owner is not None and modifies_known_mutable(owner, name):
            size, args = _grown(args, kwargs)
            _charge(context, size, f"{type(owner).__name__}.{name}")
        return super().call(context, obj, *args, **kwargs)
