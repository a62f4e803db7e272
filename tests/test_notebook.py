"""The example notebook, run top to bottom in a Jupyter kernel against the real PostgreSQL and Redis and local
workers, as a lab member would run it."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient
from service import Workers

from mei_service.demo.experiment import DATASET

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "daily_use.ipynb"


def text_of(cell: nbformat.NotebookNode) -> str:
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts += [str(value) for value in output.get("data", {}).values()]
    return "".join(parts)


def test_the_notebook_is_kept_without_outputs():
    for cell in nbformat.read(NOTEBOOK, as_version=4).cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "strip the outputs before committing"


def test_the_example_notebook_runs_top_to_bottom(database, clean_framework_tables, tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    workers = Workers(tmp_path / "workers.log", processes=2).wait_ready()
    try:
        # The kernel inherits this run's environment: its schemas, store, queue and allow-list.
        NotebookClient(
            notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
        ).execute()
    finally:
        workers.stop()
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [text_of(cell) for cell in code]
    everything = "\n".join(outputs)
    neurons = DATASET["neurons"]
    kinds = {(output.output_type, output.get("name")) for cell in code for output in cell.outputs}
    assert ("error", None) not in kinds and ("stream", "stderr") not in kinds, "no error and no warning"
    assert "WARNING" not in everything
    assert f"total {neurons}: done {neurons}, queued 0, running 0, failed 0" in everything
    assert "refused: component 'stopper' (mei.stoppers.NumIterations)" in everything
    assert f"{neurons} failed: ConfigurationError: component 'stopper'" in everything and "num_iteration" in everything
    page = outputs[-1]
    assert page.count('class="best"') == neurons and "data:image/png;base64," in page
