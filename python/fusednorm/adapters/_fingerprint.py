"""Fingerprints of a norm class's forward: what convert() checks before it trusts an adapter.

An adapter reproduces one forward, written in one library version.  A class is converted only
when its forward (and the helper methods that forward calls on ``self``) still is that code:
same statements, same attribute names, same constants.  Local variable names, argument names,
comments, docstrings and type annotations do not count (transformers has the same forward
under many class names, with ``x`` in one copy and ``hidden_states`` in another).

The fingerprint is a hash of a canonical text of the function's syntax tree.  It is computed
from source (``inspect.getsource`` for a live class, or the text of a file for a class that is
not imported), so the two agree; only fields that carry meaning enter it, so it does not move
with the Python version.
"""
import ast
import hashlib
import inspect
import textwrap
from typing import Dict, Optional, Tuple

# Fields that do not change what a function computes.
_SKIP = frozenset({"ctx", "type_comment", "kind", "type_params", "decorator_list", "returns",
                   "annotation"})


def _canon(node, names: Dict[str, str]) -> str:
    if isinstance(node, ast.AST):
        if isinstance(node, (ast.Load, ast.Store, ast.Del)):
            return ""
        parts = [type(node).__name__]
        for field in node._fields:
            if field in _SKIP:
                continue
            value = getattr(node, field, None)
            if value is None or value == []:
                continue
            if isinstance(node, ast.Name) and field == "id":
                parts.append("id=" + names.get(value, value))
            elif isinstance(node, ast.arg) and field == "arg":
                parts.append("arg=" + names.get(value, value))
            else:
                parts.append(field + "=" + _canon(value, names))
        return "(" + " ".join(parts) + ")"
    if isinstance(node, list):
        return "[" + ",".join(_canon(n, names) for n in node) + "]"
    return repr(node)


def _body(fn: ast.FunctionDef):
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]  # the docstring
    return body


def canonical(fn: ast.FunctionDef) -> str:
    """Arguments and body of ``fn`` with arguments and locals renamed in order of appearance
    (globals such as ``torch`` and every attribute name are kept)."""
    a = fn.args
    names: Dict[str, str] = {}
    for arg in a.posonlyargs + a.args + [a.vararg] + a.kwonlyargs + [a.kwarg]:
        if arg is not None:
            names.setdefault(arg.arg, f"a{len(names)}")
    body = _body(fn)
    for node in ast.walk(ast.Module(body=body, type_ignores=[])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.setdefault(node.id, f"v{len(names)}")
    return _canon(a, names) + _canon(body, names)


def self_calls(fn: ast.FunctionDef):
    """Names of the methods ``fn`` calls on ``self`` (``self._norm(x)``), sorted."""
    out = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "self":
            out.add(node.func.attr)
    return sorted(out)


def combine(forward: ast.FunctionDef, helpers: Dict[str, ast.FunctionDef]) -> str:
    text = "forward:" + canonical(forward)
    for name in sorted(helpers):
        text += f"|{name}:" + canonical(helpers[name])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _parse_function(fn) -> ast.FunctionDef:
    tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    node = tree.body[0]
    if not isinstance(node, ast.FunctionDef):
        raise TypeError(f"{fn!r} is not a plain function")
    return node


# cls -> (fingerprint, why not, {method name: the function object it was computed from})
_CACHE: Dict[type, tuple] = {}


def of_class(cls) -> Tuple[Optional[str], Optional[str]]:
    """(fingerprint of cls.forward and the helpers it calls on self, None), or (None, why not).

    A helper is counted when the class (or a base that is not torch.nn.Module) defines it as
    a plain function: that is where a subclass or a patch could change the math.  Cached per
    class while forward and those helpers are the same function objects (a patch recomputes)."""
    hit = _CACHE.get(cls)
    if hit is not None and all(inspect.getattr_static(cls, n, None) is f
                               for n, f in hit[2].items()):
        return hit[0], hit[1]
    fp, why, used = _compute(cls)
    _CACHE[cls] = (fp, why, used)
    return fp, why


def _compute(cls):
    forward = inspect.getattr_static(cls, "forward", None)
    used = {"forward": forward}
    if not inspect.isfunction(forward):
        return None, f"{cls.__qualname__}.forward is not a plain function ({forward!r})", used
    try:
        node = _parse_function(forward)
        helpers = {}
        for name in self_calls(node):
            fn = inspect.getattr_static(cls, name, None)
            used[name] = fn
            if inspect.isfunction(fn) and not fn.__module__.startswith("torch."):
                helpers[name] = _parse_function(fn)
    except (OSError, TypeError, SyntaxError) as e:
        return None, (f"cannot read the source of {cls.__qualname__}.forward to verify it "
                      f"({e})"), used
    return combine(node, helpers), None, used


def of_source(class_node: ast.ClassDef) -> Optional[str]:
    """The same fingerprint for a class read from a file (helpers looked up in that class
    only); None when the class does not define forward."""
    methods = {n.name: n for n in class_node.body if isinstance(n, ast.FunctionDef)}
    if "forward" not in methods:
        return None
    helpers = {n: methods[n] for n in self_calls(methods["forward"]) if n in methods}
    return combine(methods["forward"], helpers)
