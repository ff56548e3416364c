"""Task adapters: GLUE, SQuAD v1.1, CoNLL-2003 and the synthetic tasks, behind one registry.

    from grain.tasks import get_task
    task = get_task("sst2")
    raw = task.load("validation", data_dir="data")      # or $GRAIN_DATA_DIR, else the hub
    features = task.encode(raw, tokenizer)
"""

from grain.tasks.registry import HEADS, TASKS, Task, get_task, register
from grain.tasks import conll, glue, squad, synthetic  # noqa: F401  (registers the tasks)
from grain.tasks.conll import TokenClassificationTask
from grain.tasks.glue import GlueTask
from grain.tasks.squad import QuestionAnsweringTask

__all__ = ["HEADS", "TASKS", "Task", "GlueTask", "TokenClassificationTask", "QuestionAnsweringTask", "get_task",
           "register"]
