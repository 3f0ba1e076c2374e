"""The interpreter path: JSON Logic evaluated in Python with jsonlogic.com (json-logic-js) semantics.

json-logic-qubit supplies what is a rule (`is_logic`) and the operations that already behave like
json-logic-js (`merge`, `log`). Its `jsonLogic` dispatches through module-global tables that `add_operation`
changes for every caller, and recursion inside `if`/`and`/`or` goes back to that global `jsonLogic`, so this
module has its own dispatch and operation table and registers nothing in the library.
Differences of json-logic-qubit 0.9.1 from json-logic-js that this module corrects (one fails the classic
suite: `reduce` with an initial value read from the data):

- truthiness: NaN is truthy and `{}` falsy in qubit (`bool()`); in JS NaN is falsy and every object truthy;
- `==`/`!=` compare numbers with strings as text (`1.0 == "1"` is false), treat `null == false` as true and
  `"" == 0` as false; JS converts the string to a number and `null` equals only `null`; qubit never turns
  an array into text (`[1] == 1` is false, JS: true) and `===` compares arrays by content (JS: by identity);
- `<`, `<=`, `>`, `>=` return false for any `null` operand (JS converts it to 0), raise on text that is not a
  number (JS compares with NaN: false) and compare text by code point (JS: by UTF-16 code unit);
- `+`, `-`, `*`, `/`, `%`, `min`, `max` raise on non-numeric text (JS: NaN), `+`/`*` use Python number
  parsing instead of `parseFloat`, `*` of one argument converts it (JS returns it unchanged), `%` is Python's
  floored modulo (JS: truncated, sign of the dividend), `min`/`max` of nothing give null (JS: ±Infinity);
- `cat` writes `1.0` as "1.0", `True` as "True" and `None` as "None" (JS: "1", "true", "");
- `substr` slices code points and ignores JS's clamping and length rules; `in` raises on a non-string needle
  in a string and finds `true` in `[1]`;
- `var` reads negative list indexes and padded numbers (`"01"`), and treats a falsy data object as `{}`;
- `?:` requires exactly three arguments; `reduce` does not evaluate its initial value;
- `method` and `count` exist (json-logic-js 2 has neither; `method` lets a rule call any Python method).

JavaScript strings are UTF-16: `<`, `substr`, `in` and `var` of a text's characters work on UTF-16 code units
here too, and a `cat` that joins the halves of a surrogate pair makes one character of them.

Product decisions that both this interpreter and the SQL compiler follow:

- division and remainder by zero (`{"/": [x, 0]}`, `{"%": [x, 0]}`) give null, which is falsy (JS gives
  ±Infinity or NaN);
- `matches` `[text, pattern]` searches `text` (converted like JS `String()`) for the RE2 `pattern`
  (search semantics, `re2.search`); a null pattern never matches; an invalid pattern is an error
  (`LogicEvaluationError`);
- `naming` `[text, convention]` is true when `text` (converted like JS `String()`) breaks the convention
  (engine/naming.py; the convention must have been bound into the logic, else it is an error).
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Callable

import json_logic
import re2

from engine.conventions import Convention
from engine.errors import LogicEvaluationError
from engine.naming import diagnose


class _Undefined:
    """JavaScript's `undefined`: a missing argument or the value of an empty `and`/`or`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "undefined"


UNDEFINED = _Undefined()

# ECMAScript WhiteSpace and LineTerminator code points (what Number() and parseFloat() skip).
JS_WHITESPACE = (
    "\t\n\x0b\x0c\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
# A decimal numeral as JavaScript's Number() and parseFloat() read it (after the blanks are trimmed).
DECIMAL_PATTERN = r"[+-]?(?:Infinity|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
_DECIMAL_LITERAL = re.compile(DECIMAL_PATTERN + r"\Z")
_DECIMAL_PREFIX = re.compile(DECIMAL_PATTERN)
_RADIX_LITERAL = re.compile(r"0(?:[xX]([0-9a-fA-F]+)|[oO]([0-7]+)|[bB]([01]+))\Z")
_ARRAY_INDEX = re.compile(r"(?:0|[1-9][0-9]*)\Z")


def is_number(value: Any) -> bool:
    """True for a JSON number (a Python int or float, never a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float(number: int | float) -> float:
    """A JSON number as the double JavaScript holds for it."""
    try:
        return float(number)
    except OverflowError:
        return math.inf if number > 0 else -math.inf


def _is_object(value: Any) -> bool:
    return isinstance(value, (list, dict))


def truthy(value: Any) -> bool:
    """JSON Logic truthiness: false, 0, NaN, "", null and [] are false; everything else ("0", {}) is true."""
    if value is None or value is UNDEFINED or value is False:
        return False
    if isinstance(value, str | list):
        return len(value) > 0
    if is_number(value):
        number = _float(value)
        return number != 0 and not math.isnan(number)
    return True


def string_to_number(text: str) -> float:
    """JavaScript `Number(text)`: trimmed decimal, `Infinity`, 0x/0o/0b integers; "" is 0, anything else NaN."""
    text = text.strip(JS_WHITESPACE)
    if not text:
        return 0.0
    if _DECIMAL_LITERAL.match(text):
        return _signed_infinity(text) if text.endswith("Infinity") else float(text)
    radix = _RADIX_LITERAL.match(text)
    if radix:
        hex_digits, octal_digits, binary_digits = radix.groups()
        if hex_digits:
            return _float(int(hex_digits, 16))
        return _float(int(octal_digits, 8) if octal_digits else int(binary_digits, 2))
    return math.nan


def _signed_infinity(text: str) -> float:
    return -math.inf if text.startswith("-") else math.inf


def to_number(value: Any) -> float:
    """JavaScript `Number(value)` for JSON values."""
    if is_number(value):
        return _float(value)
    if value is None or value is False:
        return 0.0
    if value is True:
        return 1.0
    if isinstance(value, str):
        return string_to_number(value)
    if isinstance(value, list):
        return string_to_number(to_string(value))
    return math.nan


def parse_float(value: Any) -> float:
    """JavaScript `parseFloat(value)`: the longest decimal prefix of the value's text after leading blanks."""
    text = to_string(value).lstrip(JS_WHITESPACE)
    prefix = _DECIMAL_PREFIX.match(text)
    if not prefix:
        return math.nan
    literal = prefix.group()
    return _signed_infinity(literal) if literal.endswith("Infinity") else float(literal)


def number_to_string(number: int | float) -> str:
    """JavaScript `String(number)`: shortest round-trip digits laid out as ECMAScript Number::toString does."""
    number = _float(number)
    if math.isnan(number):
        return "NaN"
    if number == 0:
        return "0"
    if number < 0:
        return "-" + number_to_string(-number)
    if math.isinf(number):
        return "Infinity"
    digits, point = _shortest_digits(number)
    return _layout_digits(digits, point)


def _shortest_digits(number: float) -> tuple[str, int]:
    """The shortest digits d1..dk and the exponent n with number == 0.d1..dk × 10^n (number > 0)."""
    mantissa, _, exponent = repr(number).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    significant = digits.lstrip("0")
    point -= len(digits) - len(significant)
    return significant.rstrip("0"), point


def _layout_digits(digits: str, point: int) -> str:
    count = len(digits)
    if count <= point <= 21:
        return digits + "0" * (point - count)
    if 0 < point <= 21:
        return digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return "0." + "0" * -point + digits
    exponent = point - 1
    sign = "+" if exponent >= 0 else "-"
    mantissa = digits if count == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{sign}{abs(exponent)}"


def to_string(value: Any) -> str:
    """JavaScript `String(value)` for JSON values (arrays joined with ",", objects "[object Object]")."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if value is UNDEFINED:
        return "undefined"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if is_number(value):
        return number_to_string(value)
    if isinstance(value, list):
        return ",".join(_join_element(element) for element in value)
    return "[object Object]"


def _join_element(value: Any) -> str:
    """How `Array.prototype.join` writes one element: null and undefined as ""."""
    return "" if value is None or value is UNDEFINED else to_string(value)


def _to_primitive(value: Any) -> Any:
    return to_string(value) if _is_object(value) else value


def _utf16(text: str) -> bytes:
    """The text's UTF-16 code units, big-endian, so that bytes order like JavaScript orders strings."""
    return text.encode("utf-16-be", "surrogatepass")


def _from_utf16(units: bytes) -> str:
    return units.decode("utf-16-be", "surrogatepass")


def loose_equals(left: Any, right: Any) -> bool:
    """JavaScript `left == right`."""
    if left is None or left is UNDEFINED or right is None or right is UNDEFINED:
        return (left is None or left is UNDEFINED) and (right is None or right is UNDEFINED)
    if isinstance(left, bool) and isinstance(right, bool):
        return left is right
    if isinstance(left, bool):
        return loose_equals(1.0 if left else 0.0, right)
    if isinstance(right, bool):
        return loose_equals(left, 1.0 if right else 0.0)
    if _is_object(left) and _is_object(right):
        return left is right
    left, right = _to_primitive(left), _to_primitive(right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    return to_number(left) == to_number(right)


def strict_equals(left: Any, right: Any) -> bool:
    """JavaScript `left === right`."""
    if is_number(left) and is_number(right):
        return _float(left) == _float(right)
    if isinstance(left, str) and isinstance(right, str):
        return left == right
    if isinstance(left, bool) and isinstance(right, bool):
        return left is right
    if left is None or left is UNDEFINED or _is_object(left):
        return left is right
    return False


def _less_than(left: Any, right: Any) -> bool | None:
    """JavaScript's abstract relational comparison `left < right`; None stands for `undefined` (a NaN)."""
    left, right = _to_primitive(left), _to_primitive(right)
    if isinstance(left, str) and isinstance(right, str):
        return _utf16(left) < _utf16(right)
    left_number, right_number = to_number(left), to_number(right)
    if math.isnan(left_number) or math.isnan(right_number):
        return None
    return left_number < right_number


def js_less(left: Any, right: Any) -> bool:
    """JavaScript `left < right`."""
    return _less_than(left, right) is True


def js_less_or_equal(left: Any, right: Any) -> bool:
    """JavaScript `left <= right`."""
    return _less_than(right, left) is False


def _argument(arguments: tuple, index: int) -> Any:
    return arguments[index] if index < len(arguments) else UNDEFINED


# Operations over evaluated arguments: each takes (data, *arguments) like json-logic-js's `this` and arguments.


def _op_equals(data, *arguments):
    return loose_equals(_argument(arguments, 0), _argument(arguments, 1))


def _op_not_equals(data, *arguments):
    return not loose_equals(_argument(arguments, 0), _argument(arguments, 1))


def _op_strict_equals(data, *arguments):
    return strict_equals(_argument(arguments, 0), _argument(arguments, 1))


def _op_strict_not_equals(data, *arguments):
    return not strict_equals(_argument(arguments, 0), _argument(arguments, 1))


def _op_less(data, *arguments):
    first, second, third = (_argument(arguments, index) for index in range(3))
    if third is UNDEFINED:
        return js_less(first, second)
    return js_less(first, second) and js_less(second, third)


def _op_less_or_equal(data, *arguments):
    first, second, third = (_argument(arguments, index) for index in range(3))
    if third is UNDEFINED:
        return js_less_or_equal(first, second)
    return js_less_or_equal(first, second) and js_less_or_equal(second, third)


def _op_greater(data, *arguments):
    return js_less(_argument(arguments, 1), _argument(arguments, 0))


def _op_greater_or_equal(data, *arguments):
    return js_less_or_equal(_argument(arguments, 1), _argument(arguments, 0))


def _op_truthy(data, *arguments):
    return truthy(_argument(arguments, 0))


def _op_falsy(data, *arguments):
    return not truthy(_argument(arguments, 0))


def _op_add(data, *arguments):
    total = 0.0
    for argument in arguments:
        total = total + parse_float(argument)
    return total


def _op_multiply(data, *arguments):
    if not arguments:
        raise LogicEvaluationError('"*" needs at least one argument')
    product = arguments[0]
    for argument in arguments[1:]:
        product = parse_float(product) * parse_float(argument)
    return product


def _op_subtract(data, *arguments):
    minuend, subtrahend = _argument(arguments, 0), _argument(arguments, 1)
    if subtrahend is UNDEFINED:
        return -to_number(minuend)
    return to_number(minuend) - to_number(subtrahend)


def _op_divide(data, *arguments):
    """Division; a zero divisor gives null (a product decision: JS would give ±Infinity or NaN)."""
    dividend, divisor = to_number(_argument(arguments, 0)), to_number(_argument(arguments, 1))
    if divisor == 0:
        return None
    return dividend / divisor


def _op_remainder(data, *arguments):
    """JS remainder (sign of the dividend); a zero divisor gives null like division does."""
    dividend, divisor = to_number(_argument(arguments, 0)), to_number(_argument(arguments, 1))
    if divisor == 0:
        return None
    return js_remainder(dividend, divisor)


def js_remainder(dividend: float, divisor: float) -> float:
    """JavaScript `dividend % divisor` for a nonzero divisor."""
    if math.isnan(dividend) or math.isnan(divisor) or math.isinf(dividend):
        return math.nan
    if math.isinf(divisor):
        return dividend
    return math.fmod(dividend, divisor)


def _op_min(data, *arguments):
    return _extreme([to_number(argument) for argument in arguments], smallest=True)


def _op_max(data, *arguments):
    return _extreme([to_number(argument) for argument in arguments], smallest=False)


def _extreme(numbers: list[float], smallest: bool) -> float:
    """`Math.min`/`Math.max`: NaN if any is NaN, ±Infinity of none, -0 below +0."""
    if any(math.isnan(number) for number in numbers):
        return math.nan
    best = math.inf if smallest else -math.inf
    for number in numbers:
        if smallest and (number < best or (number == best == 0 and math.copysign(1, number) < 0)):
            best = number
        elif not smallest and (number > best or (number == best == 0 and math.copysign(1, number) > 0)):
            best = number
    return best


def _op_cat(data, *arguments):
    text = "".join(_join_element(argument) for argument in arguments)
    # Halves of a surrogate pair that meet here form one character, as UTF-16 strings do in JavaScript.
    return _from_utf16(_utf16(text))


def _op_substr(data, *arguments):
    source, start, length = (_argument(arguments, index) for index in range(3))
    if js_less(length, 0):
        # json-logic-js emulates PHP here: a negative length drops that many units from the end.
        rest = _js_substr(to_string(source), start, UNDEFINED)
        if isinstance(_to_primitive(length), str):
            # JS adds a number to text (or an array's text) by concatenation; the result is never a number.
            return _js_substr(rest, 0, str(len(_utf16(rest)) // 2) + to_string(length))
        return _js_substr(rest, 0, len(_utf16(rest)) // 2 + to_number(length))
    return _js_substr(to_string(source), start, length)


def _to_integer(value: Any) -> float:
    """ECMAScript ToIntegerOrInfinity."""
    number = to_number(value)
    if math.isnan(number):
        return 0
    if math.isinf(number):
        return number
    return math.trunc(number)


def _js_substr(text: str, start: Any, length: Any) -> str:
    """`String.prototype.substr` over UTF-16 code units."""
    units = _utf16(text)
    size = len(units) // 2
    first = _to_integer(start)
    if first < 0:
        first = max(size + first, 0)
    first = min(first, size)
    count = size if length is UNDEFINED else _to_integer(length)
    last = min(first + min(max(count, 0), size), size)
    if first >= last:
        return ""
    return _from_utf16(units[2 * int(first) : 2 * int(last)])


def _op_in(data, *arguments):
    needle, haystack = _argument(arguments, 0), _argument(arguments, 1)
    if isinstance(haystack, str):
        # json-logic-js first returns false for any falsy haystack, so "" contains nothing, not even "".
        return haystack != "" and _utf16_find(_utf16(haystack), _utf16(to_string(needle)))
    if isinstance(haystack, list):
        return any(strict_equals(needle, element) for element in haystack)
    return False


def _utf16_find(haystack: bytes, needle: bytes) -> bool:
    position = haystack.find(needle)
    while position != -1 and position % 2:
        position = haystack.find(needle, position + 1)
    return position != -1


def _op_var(data, *arguments):
    name, default = _argument(arguments, 0), _argument(arguments, 1)
    not_found = None if default is UNDEFINED else default
    if name is UNDEFINED or name is None or name == "":
        return data
    for key in to_string(name).split("."):
        if data is None or data is UNDEFINED:
            return not_found
        data = _property(data, key)
        if data is UNDEFINED:
            return not_found
    return data


def _property(value: Any, key: str) -> Any:
    """JavaScript `value[key]` for JSON values (own data only; prototype members are not data)."""
    if isinstance(value, dict):
        return value.get(key, UNDEFINED)
    if isinstance(value, list | str):
        size = len(value) if isinstance(value, list) else len(_utf16(value)) // 2
        if key == "length":
            return size
        if _ARRAY_INDEX.match(key) and int(key) < size:
            if isinstance(value, list):
                return value[int(key)]
            return _from_utf16(_utf16(value)[2 * int(key) : 2 * int(key) + 2])
    return UNDEFINED


def _op_missing(data, *arguments):
    keys = arguments[0] if arguments and isinstance(arguments[0], list) else arguments
    missing = []
    for key in keys:
        value = _op_var(data, key)
        if value is None or (isinstance(value, str) and value == ""):
            missing.append(key)
    return missing


def _op_missing_some(data, *arguments):
    need_count, options = _argument(arguments, 0), _argument(arguments, 1)
    are_missing = _apply({"missing": options}, data)
    present = _property(options, "length") if isinstance(options, list | str) else UNDEFINED
    if js_less_or_equal(need_count, math.nan if present is UNDEFINED else present - len(are_missing)):
        return []
    return are_missing


def _op_matches(data, *arguments):
    """`matches` [text, pattern]: RE2 search of the pattern in String(text); a null pattern never matches."""
    text, pattern = _argument(arguments, 0), _argument(arguments, 1)
    if pattern is None or pattern is UNDEFINED:
        return False
    compiled = compile_pattern(to_string(pattern))
    return compiled.search(to_string(text).encode("utf-8", "surrogatepass")) is not None


def _op_naming(data, *arguments):
    """`naming` [text, convention, cross values...] as engine.naming.bind_conventions binds it."""
    text, convention = _argument(arguments, 0), _argument(arguments, 1)
    if not isinstance(convention, Convention):
        raise LogicEvaluationError(f"naming: the convention {to_string(convention)!r} is not known to this evaluation")
    cross_values = dict(zip(convention.cross_fields, (to_string(value) for value in arguments[2:])))
    return diagnose(convention, to_string(text), cross_values) is not None


@functools.lru_cache(maxsize=512)
def compile_pattern(pattern: str) -> Any:
    """The compiled RE2 regular expression; LogicEvaluationError when the pattern is not valid RE2."""
    options = re2.Options()
    options.log_errors = False
    try:
        return re2.compile(pattern.encode("utf-8", "surrogatepass"), options)
    except re2.error as error:
        raise LogicEvaluationError(f"invalid regular expression {pattern!r} in matches: {error}") from None


def _library_operation(name: str) -> Callable:
    """An operation of json-logic-qubit that already behaves like json-logic-js, adapted to our calling form."""
    operation = json_logic.operations[name]
    return lambda data, *arguments: operation(*arguments)


OPERATIONS: dict[str, Callable[..., Any]] = {
    "merge": _library_operation("merge"),
    "log": _library_operation("log"),
    "==": _op_equals,
    "!=": _op_not_equals,
    "===": _op_strict_equals,
    "!==": _op_strict_not_equals,
    "<": _op_less,
    "<=": _op_less_or_equal,
    ">": _op_greater,
    ">=": _op_greater_or_equal,
    "!!": _op_truthy,
    "!": _op_falsy,
    "+": _op_add,
    "-": _op_subtract,
    "*": _op_multiply,
    "/": _op_divide,
    "%": _op_remainder,
    "min": _op_min,
    "max": _op_max,
    "cat": _op_cat,
    "substr": _op_substr,
    "in": _op_in,
    "var": _op_var,
    "missing": _op_missing,
    "missing_some": _op_missing_some,
    "matches": _op_matches,
    "naming": _op_naming,
}


# Operations that decide themselves which of their (unevaluated) arguments to evaluate.


def _form_if(values: list, data: Any) -> Any:
    index = 0
    while index < len(values) - 1:
        if truthy(_apply(values[index], data)):
            return _apply(values[index + 1], data)
        index += 2
    if index == len(values) - 1:
        return _apply(values[index], data)
    return None


def _form_and(values: list, data: Any) -> Any:
    current = UNDEFINED
    for value in values:
        current = _apply(value, data)
        if not truthy(current):
            return current
    return current


def _form_or(values: list, data: Any) -> Any:
    current = UNDEFINED
    for value in values:
        current = _apply(value, data)
        if truthy(current):
            return current
    return current


def _scoped(values: list, data: Any) -> tuple[Any, Any]:
    """The array a scoped operation runs over (or None when it is not one) and the logic run per element."""
    items = _apply(_argument(tuple(values), 0), data)
    return (items if isinstance(items, list) else None), _argument(tuple(values), 1)


def _form_filter(values: list, data: Any) -> Any:
    items, logic = _scoped(values, data)
    return [item for item in items or [] if truthy(_apply(logic, item))]


def _form_map(values: list, data: Any) -> Any:
    items, logic = _scoped(values, data)
    return [_apply(logic, item) for item in items or []]


def _form_reduce(values: list, data: Any) -> Any:
    items, logic = _scoped(values, data)
    initial = _apply(values[2], data) if len(values) > 2 else None
    if items is None:
        return initial
    accumulator = initial
    for item in items:
        accumulator = _apply(logic, {"current": item, "accumulator": accumulator})
    return accumulator


def _form_all(values: list, data: Any) -> Any:
    items, logic = _scoped(values, data)
    return bool(items) and all(truthy(_apply(logic, item)) for item in items)


def _form_none(values: list, data: Any) -> Any:
    items, logic = _scoped(values, data)
    return not any(truthy(_apply(logic, item)) for item in items or [])


def _form_some(values: list, data: Any) -> Any:
    items, logic = _scoped(values, data)
    return any(truthy(_apply(logic, item)) for item in items or [])


# The operations whose logic runs once per element of an array, with the element as its data.
SCOPED_OPERATORS = frozenset({"filter", "map", "reduce", "all", "none", "some"})

SPECIAL_FORMS: dict[str, Callable[[list, Any], Any]] = {
    "if": _form_if,
    "?:": _form_if,
    "and": _form_and,
    "or": _form_or,
    "filter": _form_filter,
    "map": _form_map,
    "reduce": _form_reduce,
    "all": _form_all,
    "none": _form_none,
    "some": _form_some,
}


def _apply(logic: Any, data: Any) -> Any:
    if isinstance(logic, list):
        return [_apply(element, data) for element in logic]
    if not json_logic.is_logic(logic):
        return logic
    operator = next(iter(logic))
    values = logic[operator]
    if not isinstance(values, list):
        values = [values]
    form = SPECIAL_FORMS.get(operator)
    if form is not None:
        return form(values, data)
    operation = OPERATIONS.get(operator)
    if operation is None:
        raise LogicEvaluationError(f"unknown operator {operator!r}")
    return operation(data, *[_apply(value, data) for value in values])


def _to_json(value: Any) -> Any:
    if value is UNDEFINED:
        return None
    if isinstance(value, list):
        return [_to_json(element) for element in value]
    return value


def evaluate(logic: Any, data: Any) -> Any:
    """The value of JSON Logic `logic` over `data`, as json-logic-js computes it (plus `matches`).

    Numbers come back as floats where an operation computed them; `undefined` comes back as None.
    Raises LogicEvaluationError (and nothing else) for logic that cannot be evaluated: an unknown operator,
    an invalid `matches` pattern, `*` without arguments, nesting too deep.
    """
    return _to_json(evaluate_javascript(logic, data))


def evaluate_javascript(logic: Any, data: Any) -> Any:
    """`evaluate` without turning JavaScript's `undefined` (UNDEFINED) into None."""
    try:
        return _apply(logic, data)
    except LogicEvaluationError:
        raise
    except RecursionError:
        raise LogicEvaluationError("logic is nested too deeply to evaluate") from None
    except Exception as error:  # a malformed rule must never surface as a Python error
        raise LogicEvaluationError(f"cannot evaluate logic: {error}") from None


def nest_row(row: dict[str, Any]) -> dict[str, Any]:
    """The flat row {"spend": 1.0, "prev.spend": 2.0} as the data object {"spend": 1.0, "prev": {"spend": 2.0}}."""
    data: dict[str, Any] = {}
    for name, value in row.items():
        *parents, leaf = name.split(".")
        scope = data
        for parent in parents:
            scope = scope.setdefault(parent, {})
        scope[leaf] = value
    return data


def evaluate_row(logic: Any, row: dict[str, Any]) -> Any:
    """`evaluate` over one entity row whose dotted names (`prev.spend`) are reachable by `var`."""
    return evaluate(logic, nest_row(row))
