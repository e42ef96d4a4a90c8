"""Teachers write synthetic examples. The default is the base model itself, run locally with batched generation;
`make_teacher` gives a remote one (synth/remote.py) when the config names an OpenAI-compatible URL."""

from __future__ import annotations

from dataclasses import dataclass

from inweights.generate import generate
from inweights.models import Base


@dataclass
class LocalTeacher:
    """The frozen base model as its own teacher. Its id is part of every cache key."""

    base: Base
    batch_size: int = 16

    @property
    def id(self) -> str:
        return f"local:{self.base.name}:{self.base.fingerprint}"

    def complete(self, prompts: list[str], *, prefix: str | None = None, max_new_tokens: int = 32,
                 temperature: float = 0.0, seed: int = 0, stop_at_newline: bool = True) -> list[str]:
        stop = self.base.stop_token_ids if stop_at_newline else [self.base.tokenizer.eos_token_id]
        return generate(self.base.model, self.base.tokenizer, prompts, max_new_tokens=max_new_tokens,
                        stop_token_ids=stop, batch_size=self.batch_size, temperature=temperature, seed=seed,
                        prefix=prefix)


def make_teacher(config, base: Base, cache_dir=None):
    """The teacher the synth config asks for: remote when `config.teacher` is a URL, else the local base model."""
    if config.teacher:
        from inweights.synth.remote import RemoteTeacher

        return RemoteTeacher(config.teacher, config.teacher_model, concurrency=config.teacher_concurrency,
                             timeout=config.teacher_timeout, deadline=config.teacher_deadline,
                             key_env=config.teacher_key_env, cache_dir=cache_dir)
    return LocalTeacher(base, batch_size=config.teacher_batch_size)
