"""infer.ipynb executes top to bottom on a real (tiny) 2-rank pipeline run: the merged checkpoint loads with plain
from_pretrained, reproduces train.py's pipelined held-out loss, generates Chinese, and naive device_map model
parallelism gives the single model's logits."""
import re

from transformers import AutoTokenizer

FOLDER = __import__("pathlib").Path(__file__).resolve().parents[1]


def outputs(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_infer_notebook_runs_on_the_merged_checkpoint(trained_run, tiny_data, notebook_runner):
    nb = notebook_runner(FOLDER / "infer.ipynb", env={"ZERO_NLP_OUTPUT_DIR": trained_run["out"],
                                                       "ZERO_NLP_DATA_DIR": tiny_data["tokens"]})
    text = outputs(nb)
    diff = float(re.search(r"\|diff\| (\S+)", text).group(1))
    assert diff < 1e-4, text  # the merged single model = the pipelined stages (same eval blocks)
    generated = re.findall(r"generated: (.*)", text)
    assert len(generated) == 3 and all(re.search(r"[\u4e00-\u9fff]", g) for g in generated)
    tok = AutoTokenizer.from_pretrained(tiny_data["tokenizer"])
    assert all(len(tok(g, add_special_tokens=False).input_ids) > len(tok(p, add_special_tokens=False).input_ids)
               for g, p in zip(generated, ["中国人民", "新华社北京1月1日电", "今年经济工作的主要任务是"]))
    assert "stage | layers | params | share" in text and "| device | holds |" in text
    assert float(re.search(r"max \|logits - single model\| = (\S+)", text).group(1)) < 1e-5
    assert len(re.findall(r"device \d: busy", text)) == 2
