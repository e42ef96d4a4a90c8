"""LoRA through PEFT: low-rank updates on the chosen linear layers. Saved in PEFT's own format
(`adapter_config.json` + `adapter_model.safetensors`), so vLLM and PEFT load a memory as it is."""

from __future__ import annotations

from pathlib import Path

from peft import LoraConfig, PeftModel, get_peft_model


class LoRA:
    name = "lora"
    default_lr = 5e-4

    def attach(self, model, config):
        if isinstance(model, PeftModel):
            raise ValueError("the model already carries a memory; attach to a plain base model")
        lora = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=0.0, bias="none",
                          target_modules=list(config.target_modules), task_type="CAUSAL_LM")
        return get_peft_model(model, lora)

    def save(self, model, directory: Path) -> None:
        model.save_pretrained(str(directory))
        (Path(directory) / "README.md").unlink(missing_ok=True)  # PEFT's model-card stub: the manifest says more

    def load(self, model, directory: Path):
        peft_model = PeftModel.from_pretrained(model, str(directory), is_trainable=False)
        peft_model.eval()
        return peft_model

    def resume(self, model, directory: Path, config):
        """Attach a saved memory with its weights trainable, to go on training it (`learn --update`)."""
        if isinstance(model, PeftModel):
            raise ValueError("the model already carries a memory; attach to a plain base model")
        return PeftModel.from_pretrained(model, str(directory), is_trainable=True)

    def disabled(self, model):
        return model.disable_adapter()

    def detach(self, model):
        return model.unload()
