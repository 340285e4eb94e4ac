from pathlib import Path

FOLDER = Path(__file__).resolve().parents[1]


def test_infer_notebook_runs_top_to_bottom(trained, notebook_runner):
    out, metrics = trained
    nb = notebook_runner(FOLDER / "infer.ipynb", env={"ZERO_NLP_OUTPUT_DIR": str(out)})
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    # the notebook re-predicts the test split from disk: same accuracy as train.py measured in memory
    n_test = len((out / "test_predictions.jsonl").read_text(encoding="utf-8").splitlines())
    assert f"test accuracy {metrics['test_accuracy']:.4f} on {n_test} texts" in text
    assert "errors in total" in text and "true=" in text
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb.cells for o in c.get("outputs", []))
