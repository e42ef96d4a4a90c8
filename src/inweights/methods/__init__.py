"""Memory parameterizations behind one small interface.

A method is an object with `name`, `attach(model, config) -> model` (adds the trainable memory to a frozen
base and returns the model to train; only the memory's parameters require grad), `save(model, directory)`
(writes the memory's files) and `load(model, directory) -> model` (attaches a saved memory for inference).
`disabled(model)` is a context manager under which the model behaves as the plain base.
Adding a method means one module and one line in `METHODS`.
"""

from inweights.methods.lora import LoRA

METHODS = {"lora": LoRA()}
