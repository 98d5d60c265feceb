"""Prompt templates: jinja2 in a sandbox, with undefined variables as user errors, bounded output and bounded CPU.

CPU per render is bounded by an operation budget (`MAX_TEMPLATE_OPERATIONS`): every loop iteration costs
one, every call costs one plus its integer arguments (`range(n)`, `lipsum(n)`, `center(n)` are O(n)), and
every repetition (`'x' * n`) its size. Loops are counted by wrapping each `for` loop's iterable at compile
time, so nested loops over anything (ranges, strings, variables) multiply into the budget; the count lives
in a context variable, one per render, so templates rendered on several threads do not share it.
`check_template` refuses at plan time what it can see statically: nested loops over literal ranges and
integer powers or products of literals that exceed the bounds.
"""

from __future__ import annotations

import contextvars
import functools
from typing import Any

from synthforge.errors import UserError, did_you_mean

MAX_PROMPT_CHARS = 200_000  # a rendered prompt (system or user message) longer than this is a recipe mistake
MAX_TEMPLATE_OPERATIONS = 5_000_000  # ~1-2 s of template CPU; a prompt needs thousands
MAX_INT_BITS = 128  # no prompt needs a number past 2^128 (39 digits); `9 ** 9 ** 9` is past it either way it is read
_COUNTED = "_synthforge_counted"  # the global each for loop's iterable is wrapped in
_spent: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("template_operations", default=None)


class OverBudget(Exception):
    """A render spent its operation budget."""


def _charge(operations: int) -> None:
    spent = _spent.get()
    if spent is None:  # outside a render (jinja folding constants at compile time): nothing to bound
        return
    spent[0] += operations
    if spent[0] > MAX_TEMPLATE_OPERATIONS:
        raise OverBudget()


def _counted(iterable: Any):
    """The items of a for loop, each charged one operation."""
    spent = _spent.get()
    for item in iterable:
        if spent is not None:
            spent[0] += 1
            if spent[0] > MAX_TEMPLATE_OPERATIONS:
                raise OverBudget()
        yield item


_SIZED = (str, list, tuple, dict, set, frozenset)  # a filter's work grows with these (not with Undefined)


def _int_size(values) -> int:
    return sum(abs(v) for v in values if isinstance(v, int) and not isinstance(v, bool))


def _environment():
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment, SecurityError

    class BoundedSandbox(SandboxedEnvironment):
        """The sandbox, also refusing `'x' * 10**9`, `9 ** 9 ** 9` and calls with huge sizes, and charging
        each operation to the render's budget."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            refusal = _binop_refusal(operator, left, right)
            if refusal:
                raise SecurityError(refusal)
            _charge(1 + _repeat_size(left, right))
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja's signature
            if any(isinstance(a, int) and abs(a) > MAX_PROMPT_CHARS for a in (*args, *kwargs.values())):
                raise SecurityError(f"a call argument over {MAX_PROMPT_CHARS:,}")
            _charge(1 + _int_size((*args, *kwargs.values())))
            return super().call(__context, __obj, *args, **kwargs)

    # Recipes may come from anyone: the sandbox blocks attribute access to internals.
    environment = BoundedSandbox(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
    environment.filters = {name: _bounded_filter(f, SecurityError) for name, f in environment.filters.items()}
    environment.globals[_COUNTED] = _counted
    environment.globals["lipsum"] = _charged_lipsum(environment.globals["lipsum"])
    return environment


def _charged_lipsum(lipsum):
    """`lipsum(n)` writes up to n * max words: charged at that, so `lipsum(199999)` is refused before it runs."""

    def charged(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002 - jinja's names
        _charge(abs(int(n)) * abs(int(max)))
        return lipsum(n, html, min, max)

    return charged


def _bounded_filter(filter_function, error: type[Exception]):
    """A filter refusing huge size arguments (`center(10**9)`, `indent(10**9)`): filters bypass the sandbox's call()."""
    skip = 2 if hasattr(filter_function, "jinja_pass_arg") else 1  # (context or environment,) value

    @functools.wraps(filter_function)  # keeps jinja's pass_context / pass_environment marker
    def bounded(*args, **kwargs):
        if any(isinstance(a, int) and abs(a) > MAX_PROMPT_CHARS for a in (*args[skip:], *kwargs.values())):
            raise error(f"a filter argument over {MAX_PROMPT_CHARS:,}")
        value = args[skip - 1] if len(args) >= skip else None
        _charge(1 + _int_size((*args[skip:], *kwargs.values())) + (len(value) if isinstance(value, _SIZED) else 0))
        return filter_function(*args, **kwargs)

    return bounded


def _binop_refusal(operator: str, left: Any, right: Any) -> str | None:
    """Why `left <operator> right` is refused, or None: repetitions past the prompt size, integers past MAX_INT_BITS."""
    if operator == "*" and _repeat_size(left, right) > MAX_PROMPT_CHARS:
        return f"'*' would build more than {MAX_PROMPT_CHARS:,} items"
    if operator == "*" and _product_bits(left, right) > MAX_INT_BITS:
        return f"'*' result larger than 2^{MAX_INT_BITS}"
    if operator == "**" and _power_bits(left, right) > MAX_INT_BITS:
        return f"'**' result larger than 2^{MAX_INT_BITS}"
    return None


def _repeat_size(left: Any, right: Any) -> int:
    for seq, count in ((left, right), (right, left)):
        if isinstance(seq, (str, list, tuple)) and isinstance(count, int):
            return len(seq) * count
    return 0


def _product_bits(left: Any, right: Any) -> int:
    if isinstance(left, int) and isinstance(right, int):
        return abs(left).bit_length() + abs(right).bit_length()
    return 0


def _power_bits(base: Any, exponent: Any) -> float:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        return (abs(base).bit_length() - 1) * exponent + 1  # a lower bound: 2 ** 128 is 129 bits
    return 0


def _count_loops(ast) -> None:
    """Wrap every for loop's iterable in `_counted`, so each iteration is charged (jinja has no hook for it)."""
    from jinja2 import nodes

    for loop in ast.find_all(nodes.For):
        loop.iter = nodes.Call(nodes.Name(_COUNTED, "load"), [loop.iter], [], None, None, lineno=loop.lineno)


def _parse(source: str, field: str):
    from jinja2 import TemplateSyntaxError

    environment = _environment()
    try:
        return environment, environment.parse(source)
    except TemplateSyntaxError as exc:
        raise UserError(f"template syntax error on line {exc.lineno}: {exc.message}", field=field) from None


def check_template(source: str, field: str, provided: set[str]) -> None:
    """Fail now, not mid-build: a syntax error, or a variable the step will not provide.

    The verdict is remembered per (template, field, variables): every variant of a matrix validates its
    generate step again, and parsing a template costs milliseconds. A refusal is raised afresh each time."""
    refusal = _template_refusal(source, field, frozenset(provided))
    if refusal is not None:
        message, hint = refusal
        raise UserError(message, field=field, hint=hint)


@functools.lru_cache(maxsize=1024)
def _template_refusal(source: str, field: str, provided: frozenset[str]) -> tuple[str, str | None] | None:
    """(message, hint) of check_template's refusal, or None when the template is fine."""
    from jinja2 import meta

    try:
        environment, ast = _parse(source, field)
        unknown = sorted(meta.find_undeclared_variables(ast) - provided - set(environment.globals))
        if unknown:
            hint = did_you_mean(unknown[0], provided) or f"this template gets: {', '.join(sorted(provided))}"
            return f"template uses '{unknown[0]}', which this step does not provide", hint
        _check_static_costs(ast, field)
    except UserError as exc:
        return exc.message, exc.hint
    return None


def _check_static_costs(ast, field: str) -> None:
    """Refuse what is over the bounds whatever the variables: literal integer arithmetic, nested literal ranges."""
    from jinja2 import nodes

    for expression in ast.find_all((nodes.Pow, nodes.Mul)):
        try:
            _literal_int(expression)
        except ValueError as exc:
            raise UserError(f"unsafe template on line {expression.lineno}: {exc}", field=field) from None
    for loop in ast.find_all(nodes.For):
        iterations = _literal_loop_iterations(loop)
        if iterations > MAX_TEMPLATE_OPERATIONS:
            raise UserError(f"template on line {loop.lineno}: nested loops run {iterations:,} times, over the budget of "
                            f"{MAX_TEMPLATE_OPERATIONS:,} operations per prompt", field=field,
                            hint="loop over fewer items (a prompt needs a few)")


def _literal_int(node) -> int | None:
    """The value of an integer expression of literals (`9 ** 9 ** 9`), None if it is not one; ValueError if over the bounds."""
    from jinja2 import nodes

    if isinstance(node, nodes.Const):
        return node.value if isinstance(node.value, int) and not isinstance(node.value, bool) else None
    if isinstance(node, nodes.Neg):
        value = _literal_int(node.node)
        return None if value is None else -value
    if isinstance(node, (nodes.Pow, nodes.Mul)):
        left, right = _literal_int(node.left), _literal_int(node.right)
        if left is None or right is None:
            return None
        operator = "**" if isinstance(node, nodes.Pow) else "*"
        refusal = _binop_refusal(operator, left, right)
        if refusal:
            raise ValueError(refusal)
        if operator == "*":
            return left * right
        return left ** right if right >= 0 else None
    return None


def _literal_loop_iterations(loop) -> int:
    """Iterations of a loop over a literal `range(...)` times those of the deepest such loop nested in it (else 1)."""
    from jinja2 import nodes

    body = [node for node in loop.iter_child_nodes() if node is not loop.iter]
    inner = max((_literal_loop_iterations(child) for child in _outermost_loops(body)), default=1)
    call = loop.iter
    if not (isinstance(call, nodes.Call) and isinstance(call.node, nodes.Name) and call.node.name == "range"):
        return inner
    arguments = [_literal_int(argument) for argument in call.args]
    if None in arguments or call.kwargs:
        return inner
    try:
        return len(range(*arguments)) * inner
    except (TypeError, ValueError, OverflowError):  # not a valid range, or one past sys.maxsize: the call refuses it
        return inner


def _outermost_loops(found):
    """The for loops among `found` and, below those that are not loops, the first ones on each branch."""
    from jinja2 import nodes

    for node in found:
        if isinstance(node, nodes.For):
            yield node
        else:
            yield from _outermost_loops(node.iter_child_nodes())


class PromptTemplate:
    def __init__(self, source: str, field: str):
        self.field = field
        environment, ast = _parse(source, field)
        _count_loops(ast)
        self._template = environment.from_string(ast)

    def render(self, variables: dict[str, Any]) -> str:
        from jinja2 import UndefinedError
        from jinja2.sandbox import SecurityError

        try:
            return self._bounded_render(variables).strip()
        except UndefinedError as exc:
            known = ", ".join(sorted(variables))
            raise UserError(f"undefined variable: {exc.message}", field=self.field, hint=f"variables available: {known}") from None
        except SecurityError as exc:
            raise UserError(f"unsafe template: {exc}", field=self.field) from None
        except OverBudget:
            raise UserError(f"template rendering took more than {MAX_TEMPLATE_OPERATIONS:,} operations (loop iterations, "
                            "calls, repeated items)", field=self.field, hint="loop over fewer items (a prompt needs a few)") from None
        except UserError:
            raise
        except Exception as exc:  # the template is the user's code: any failure in it is theirs to fix
            first = (str(exc).splitlines() or [""])[0][:200]
            raise UserError(f"template error: {type(exc).__name__}: {first}", field=self.field) from None

    def _bounded_render(self, variables: dict[str, Any]) -> str:
        parts, size = [], 0
        budget = _spent.set([0])
        try:
            for chunk in self._template.generate(**variables):
                size += len(chunk)
                if size > MAX_PROMPT_CHARS:
                    raise UserError(f"rendered prompt is longer than {MAX_PROMPT_CHARS:,} characters", field=self.field,
                                    hint="shorten the template, its variables or few_shot_k")
                parts.append(chunk)
        finally:
            _spent.reset(budget)
        return "".join(parts)
