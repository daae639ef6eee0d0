"""Instruction datasets for every cell-to-text task: prompt templates x tasks -> Hugging Face datasets.

One verb builds a dataset: :func:`build` (also ``c2t instruct``). Each task is a small class in
:data:`TASKS` that knows how to make examples and how to score an answer; its prompt templates live in
``prompts/<task>.yaml``. :func:`score` scores a model's answers for any mix of tasks.

>>> import tempfile
>>> import c2t.instruct
>>> dsd = c2t.instruct.build(c2t.instruct.toy_adata(), out=tempfile.mkdtemp() + "/ct", tasks="cell_type_mc", top_k=8)
>>> record = dsd["train"][0]
>>> c2t.instruct.score([record], [record["completion"]])["per_task"]["cell_type_mc"]["accuracy"]
1.0
"""

from c2t.instruct._build import build, load, read_info, select_format
from c2t.instruct._score import (
    normalize_label,
    parse_choice,
    score,
    score_choice,
    score_generation,
    score_label,
)
from c2t.instruct._tasks import TASKS, Task
from c2t.instruct._templates import PROMPTS_DIR, TemplateSet, load_templates
from c2t.instruct._toy import toy_adata

__all__ = [
    "PROMPTS_DIR",
    "TASKS",
    "Task",
    "TemplateSet",
    "build",
    "load",
    "load_templates",
    "normalize_label",
    "parse_choice",
    "read_info",
    "score",
    "score_choice",
    "score_generation",
    "score_label",
    "select_format",
    "toy_adata",
]
