"""The shape the design asks for (README "Architecture"), checked from the code.

Layers are folders, and each layer imports only the layers its rule names
(LAYERS). Calls go one way: the import graph has no cycles, workers never import
one another (they meet in the state), only the state package touches SQLite, and
the event handler stays a short parse → triage → write → wake.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "feishu_mailbot"
MAX_HANDLE_LINES = 25
MAX_METHODS = 20  # no god class: the old Store had 38


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text("utf-8"), str(p)) for p in PACKAGE.rglob("*.py")}


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """Our modules that `name` imports, anywhere in it (lazy imports in functions too)."""
    package = (
        name
        if (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()
        else (name.rpartition(".")[0])
    )
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in known)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    trees = modules()
    known = set(trees)
    return {name: imports(name, tree, known) for name, tree in trees.items()}


def test_the_import_graph_has_no_cycles() -> None:
    edges = graph()
    # The graph is read right: absolute, relative and lazy imports are all edges.
    assert {"feishu_mailbot.core.model", "feishu_mailbot.mail.html"} <= edges[
        "feishu_mailbot.mail.forward"
    ]
    assert "feishu_mailbot.workers.outbox" in edges["feishu_mailbot.app.daemon"]
    assert "feishu_mailbot.compose.daily_report" in edges["feishu_mailbot.cli.daily_report"]
    # A package's __init__ importing its own modules is how a package is assembled, not
    # a call going back up: those edges are left out.
    for name in edges:
        edges[name] = {t for t in edges[name] if not t.startswith(name + ".")}
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycle = [*path[path.index(nxt) :], nxt]
                raise AssertionError("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)


P = "feishu_mailbot."
#: What each layer may import besides itself (README "Architecture"). config.settings is
#: the validated configuration as plain frozen data, the core's input like a message.
LAYERS = {
    "core": {"config.settings"},
    "config": {"core"},
    "feishu": {"core", "config"},
    "mail": {"core", "config.settings"},
    "state": {"core"},
    "compose": {"core", "config", "feishu", "mail", "state"},
    "workers": {"core", "config", "feishu", "mail", "compose", "state"},
    "app": {"core", "config", "feishu", "mail", "compose", "state", "workers"},
    "cli": {"core", "config", "feishu", "mail", "compose", "state", "workers", "app"},
    "__main__": {"cli"},
}


def test_the_package_is_its_layers() -> None:
    top = {p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__pycache__"))}
    assert top == {"__init__.py", "__main__.py", *LAYERS} - {"__main__"}, top
    # One name per feature: a file's name says the feature, its folder the layer.
    stems = {p.stem for p in PACKAGE.rglob("*.py")}
    for a, b in (("batch", "batcher"), ("batch", "batching"), ("daily_report", "reporter")):
        assert not {a, b} <= stems, (a, b)


def _layer(module: str) -> str:
    return module.removeprefix(P).split(".")[0]


def test_each_layer_imports_only_what_its_rule_allows() -> None:
    edges = graph()
    # The rule is read right: a core module importing mail would be caught.
    assert not _allowed("feishu_mailbot.core.rules", "feishu_mailbot.mail.html")
    assert _allowed("feishu_mailbot.workers.outbox", "feishu_mailbot.compose.lookups")
    broken = [
        f"{name} imports {target}"
        for name, targets in sorted(edges.items())
        if name.startswith(P)
        for target in sorted(targets)
        if not _allowed(name, target)
    ]
    assert not broken, "\n".join(broken)
    # config.settings is plain data: it imports nothing of ours.
    assert not edges["feishu_mailbot.config.settings"] - {"feishu_mailbot.config"}


def _allowed(name: str, target: str) -> bool:
    layer, inner = _layer(name), target.removeprefix(P)
    if target in ("feishu_mailbot", P + layer) or _layer(target) == layer:
        return True
    return any(inner == a or inner.startswith(a + ".") for a in LAYERS.get(layer, ()))


def test_no_worker_imports_another_worker() -> None:
    edges = graph()
    workers = {n for n in edges if n.startswith("feishu_mailbot.workers.")} - {
        "feishu_mailbot.workers.rounds"
    }
    assert len(workers) >= 3, workers  # outbox, actions, schedule
    for worker in workers:
        assert not (edges[worker] & workers), f"{worker} imports {edges[worker] & workers}"


def _imported(tree: ast.Module) -> set[str]:
    """The top-level names of every module `tree` imports, lazily or not."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level:
            found.add((node.module or "").split(".")[0])
    return found


def test_only_the_state_package_uses_sqlite() -> None:
    for name, tree in modules().items():
        if name == "feishu_mailbot.state" or name.startswith("feishu_mailbot.state."):
            continue
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(n.split(".")[0] == "sqlite3" for n in names), f"{name} imports sqlite3"


def _loaded_by_the_daemon(*prefixes: str) -> list[str]:
    """The modules starting with one of `prefixes` that importing the daemon and the
    command line loads, in a fresh interpreter."""
    probe = (
        "import sys, feishu_mailbot.app.daemon, feishu_mailbot.cli.main;"
        f"print(sorted(m for m in sys.modules if m.startswith({prefixes!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
    )
    return list(ast.literal_eval(done.stdout.strip()))


def test_only_the_postgresql_engine_imports_its_driver_and_only_when_configured() -> None:
    """The driver costs megabytes a SQLite daemon must not pay (its RSS budget)."""
    users = {name for name, tree in modules().items() if "psycopg2" in _imported(tree)}
    assert users == {"feishu_mailbot.state.postgres"}, users
    assert _loaded_by_the_daemon("psycopg", "feishu_mailbot.state.postgres") == []


def test_the_mailbox_side_is_imported_only_when_inbound_is_configured() -> None:
    """imaplib, the inbound worker and the Authentication-Results parser are for
    `inbound:` alone: a daemon without it does not load them."""
    loaded = _loaded_by_the_daemon(
        "imaplib", "authres", "feishu_mailbot.workers.inbound", "feishu_mailbot.mail.imap"
    )
    assert loaded == []


def test_the_event_handler_is_short() -> None:
    tree = modules()["feishu_mailbot.app.daemon"]
    [daemon] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Daemon"]
    [handle] = [
        n for n in daemon.body if isinstance(n, ast.AsyncFunctionDef) and n.name == "handle"
    ]
    assert handle.end_lineno is not None
    lines = handle.end_lineno - handle.lineno + 1
    assert lines <= MAX_HANDLE_LINES, f"Daemon.handle is {lines} lines"


def test_no_god_class() -> None:
    for name, tree in modules().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                methods = [
                    n for n in node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
                assert len(methods) <= MAX_METHODS, f"{name}.{node.name}: {len(methods)} methods"


STATUS_WRITE = re.compile(r"\bSET\b(?:(?!\bWHERE\b).)*\bstatus\s*=", re.I | re.S)
INSERT = re.compile(r"^\s*INSERT\b", re.I)


def sql_strings(tree: ast.AST, skip: set[str] = frozenset()) -> list[str]:
    """Every string and f-string in `tree` (an f-string's values as {}), but those
    assigned to a name in `skip`."""
    skipped = {
        id(c)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id in skip for t in node.targets)
        for c in ast.walk(node)
    }
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped or id(node) in parts:
            continue
        if isinstance(node, ast.JoinedStr):
            found.append(
                "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            )
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            found.append(node.value)
    return found


def test_only_the_lifecycle_module_writes_a_status() -> None:
    """DESIGN §2: every change of a status is a guarded move in state/lifecycle.py; a
    new row starts in its machine's initial state, bound from there, never a literal."""
    from feishu_mailbot.state.lifecycle import MACHINES

    states = {s for m in MACHINES for s in m.states}
    literal = re.compile("'(" + "|".join(sorted(states)) + ")'")
    trees = modules()
    # The scanner sees what an earlier release did: unconditional UPDATEs, an upsert.
    before = ast.parse(
        "a = \"UPDATE outbox SET status = 'pending', attempts = attempts + 1 WHERE mail_id = ?\"\n"
        "b = f\"UPDATE quarantine SET status = 'retry' WHERE key IN ({marks})\"\n"
        "c = \"INSERT INTO q (key) VALUES (?) ON CONFLICT (key) DO UPDATE SET status = 'held'\"\n"
        "d = \"INSERT INTO outbox (mail_id, status) VALUES (?, 'pending')\"\n"
        "e = \"UPDATE outbox SET raw = NULL WHERE status = 'sent'\"\n"  # a read: allowed
    )
    flagged = [
        t
        for t in sql_strings(before)
        if STATUS_WRITE.search(t) or (INSERT.match(t) and literal.search(t))
    ]
    assert len(flagged) == 4, flagged
    offenders = []
    for name, tree in trees.items():
        if name == "feishu_mailbot.state.lifecycle":
            continue
        # A migration rewrites old rows once, at open, before anything moves them.
        skip = {"SQLITE_MIGRATIONS"} if name == "feishu_mailbot.state.schema" else set()
        for text in sql_strings(tree, skip):
            if STATUS_WRITE.search(text) or (INSERT.match(text) and literal.search(text)):
                offenders.append(f"{name}: {' '.join(text.split())[:100]}")
    assert not offenders, "status written outside state/lifecycle.py:\n" + "\n".join(offenders)
