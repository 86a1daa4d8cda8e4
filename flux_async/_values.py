"""Quick constructors for the public frozen values made on every job (:func:`maker`).

A frozen attrs class writes each field through a guarded ``object.__setattr__`` call and takes
its arguments by keyword; on the path every job takes (a task's ref, its final state and result,
the outcome a batch delivers) that is most of the cost of making the value. The function
:func:`maker` returns for a class takes the fields by position and writes each one straight
through its slot, and gives an instance equal in every respect to the one the class itself
would make from the same fields.

It runs no ``__attrs_post_init__``: use it only where the fields are already known to be valid
(a task id the codec has checked, a model from a validated request). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import attrs

from .models import GeneratedImage, GenerationResult, Outcome, TaskRef, TaskState

__all__ = ["maker", "new_image", "new_outcome", "new_result", "new_task_ref", "new_task_state"]

T = TypeVar("T")


def maker(cls: type[T]) -> Callable[..., T]:
    """A positional constructor of ``cls`` (a slotted attrs class whose defaults are plain
    values, not factories): its fields in declaration order, the ones with defaults optional."""
    fields = attrs.fields(cls)  # type: ignore[arg-type]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    params: list[str] = []
    writes: list[str] = []
    for field in fields:
        slot = cls.__dict__.get(field.name)
        if slot is None or not hasattr(slot, "__set__"):
            raise TypeError(f"{cls.__name__}.{field.name} is not a slot")
        namespace[f"_set_{field.name}"] = slot.__set__
        if field.default is attrs.NOTHING:
            params.append(field.name)
        elif isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            raise TypeError(f"{cls.__name__}.{field.name} has a factory default")
        else:
            namespace[f"_default_{field.name}"] = field.default
            params.append(f"{field.name}=_default_{field.name}")
        writes.append(f"    _set_{field.name}(self, {field.name})")
    source = "\n".join(
        [f"def make_{cls.__name__}({', '.join(params)}):", "    self = _new(_cls)", *writes, "    return self"]
    )
    exec(compile(source, f"<flux_async maker of {cls.__qualname__}>", "exec"), namespace)
    made: Callable[..., T] = namespace[f"make_{cls.__name__}"]
    made.__doc__ = f"A {cls.__name__} from its fields by position, unchecked (see flux_async._values)."
    return made


# The values made on every job, by these constructors: for fields already known to be valid only.
new_task_ref = maker(TaskRef)
new_task_state = maker(TaskState)
new_result = maker(GenerationResult)
new_image = maker(GeneratedImage)
new_outcome = maker(Outcome)
