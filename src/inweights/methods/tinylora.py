"""TinyLoRA through PEFT (Morris et al. 2026, "Learning to Reason in 13 Parameters"): each target weight W
gets the update U diag(S) (sum_i v_i P_i) V^T, where U, S, V are W's own top-r singular vectors (frozen),
P_i are fixed random r x r matrices and only the small vector v (`tinylora_u` numbers per layer) trains.

Thousands of times fewer trainable numbers than LoRA, so it can hold far less, and it can move the model
only along directions the weights already use. It is here to place that end of the learning/forgetting
plane. Saved in PEFT's format; served by PEFT, not by vLLM's LoRA path.
"""

from __future__ import annotations

from peft import PeftModel, TinyLoraConfig, get_peft_model

from inweights.methods.lora import LoRA, target_modules


class TinyLoRA(LoRA):
    """LoRA's save, load, disabled and detach apply as they are: both are PEFT adapters."""

    name = "tinylora"
    default_lr = 5e-3

    def attach(self, model, config):
        if isinstance(model, PeftModel):
            raise ValueError("the model already carries a memory; attach to a plain base model")
        tiny = TinyLoraConfig(r=2, u=config.tinylora_u, target_modules=target_modules(model, config),
                              projection_seed=config.seed, task_type="CAUSAL_LM")
        return get_peft_model(model, tiny)
