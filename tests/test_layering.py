"""The framework stands alone: nothing in ``mei`` reaches the service or its broker."""

import ast
import subprocess
import sys
from pathlib import Path

import mei

FORBIDDEN = ("celery", "kombu", "redis", "flower", "mei_service", "workers")


def test_mei_source_imports_no_service_module():
    offenders = []
    for path in Path(mei.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            offenders += [f"{path.name}: {name}" for name in names if name.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_the_framework_loads_no_service_module():
    modules = "mei.methods, mei.legacy.ops, mei.modules, mei.synthetic"
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
