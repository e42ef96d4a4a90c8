"""Memory parameterizations behind one small interface.

A method is an object with `name`, `attach(model, config) -> model` (adds the trainable memory to a frozen
base and returns the model to train; only the memory's parameters require grad), `save(model, directory)`
(writes the memory's files) and `load(model, directory) -> model` (attaches a saved memory for inference).
`disabled(model)` is a context manager under which the model behaves as the plain base, and
`default_lr` is its learning rate when the config leaves `lr` unset, and
`detach(model) -> base model` removes the memory and gives back the plain base model exactly as it was.
A method that can go on training a saved memory (`learn --update`) defines `resume(model, directory, config)
-> model` (the saved memory attached with its weights trainable); one without it is re-learned from scratch.
A method that needs to see the training data before training (to choose which parameters to train) defines
`prepare(model, items, replay)`; it is called after `attach` and before the first step.

The trained model must work with `train.completion_loss` (which runs `model.get_base_model()` when present, then
the backbone at `base_model_prefix` and the output head) and with `generate.generate` (a plain `model(...)`
call with `cache=`/`position_ids`). Adding a method means one module and one line in `METHODS`.
"""

from inweights.methods.cartridge import Cartridge
from inweights.methods.full import FullFineTune
from inweights.methods.lora import LoRA
from inweights.methods.memory_layer import MemoryLayer
from inweights.methods.tinylora import TinyLoRA

METHODS = {"lora": LoRA(), "tinylora": TinyLoRA(), "full": FullFineTune(), "cartridge": Cartridge(),
           "memory_layer": MemoryLayer()}
